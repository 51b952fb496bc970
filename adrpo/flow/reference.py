"""The moving reference of ``FlowConfig.sync_ref_model`` (TR-DPO's soft update, in TRL's
convention) and the pointer swap that runs a LoRA policy with other adapter weights.

After optimizer step s, when s % ``ref_model_sync_steps`` == 0 (first at s = K, as TRL's
``SyncRefModelCallback.on_step_end`` tests ``global_step % ref_model_sync_steps == 0``), every
moving reference weight becomes

    w_ref ← (1 − α)·w_ref + α·w_θ,   α = ``ref_model_mixup_alpha``,

computed in place as ``w_ref.mul_(1 − α).add_(w_θ, alpha=α)``, TRL's order of operations.

What moves: in full fine-tuning, the frozen reference copy's parameters that are trainable in
the policy (the others never differ from the policy's); in LoRA mode, a copy of the adapter
weights (the "reference adapters"), which :func:`swapped` puts into the adapter parameters
while the reference is computed, so the reference is base + reference adapters and no second
base is held. They start equal to the initial adapters, whose zero B makes that the base.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from adrpo.flow.sharding import is_zero3_param, local, refresh


def moving_weights(trainable: Mapping[str, nn.Parameter], reference: nn.Module | None) -> dict[str, torch.Tensor]:
    """The weights the soft update moves, keyed like ``trainable``: the reference module's own
    tensors (shared storage, so mixing them moves the module) when there is one, else clones
    of ``trainable`` (the LoRA reference adapters)."""
    if reference is None:
        return {name: local(param).clone() for name, param in trainable.items()}
    own = dict(reference.named_parameters())
    return {name: local(own[name]) for name in trainable}


@torch.no_grad()
def mix_(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], *, alpha: float) -> None:
    """``target[k] ← (1 − alpha)·target[k] + alpha·source[k]`` in place, for every key of ``target``."""
    for name, value in target.items():
        value.mul_(1.0 - alpha).add_(source[name], alpha=alpha)


@torch.no_grad()
def swap(params: Mapping[str, nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    """Exchange each parameter's values with ``weights[name]`` (held like :func:`local`): pointers for
    plain tensors (no copy); for sharded parameters (FSDP2's DTensors, ZeRO-3's rows) an in-place copy
    of the local rows through a temporary, since the engine gathers from the storage it sharded, which
    a pointer swap would leave behind (then ZeRO-3's gathered copies are refreshed)."""
    for name, param in params.items():
        if isinstance(param, DTensor) or is_zero3_param(param):
            rows = local(param)
            held = rows.clone()
            rows.copy_(weights[name])
            weights[name].copy_(held)
        else:
            param.data, weights[name] = weights[name], param.data
    refresh(params.values())


@contextmanager
def swapped(params: Mapping[str, nn.Parameter], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block ``params`` hold ``weights``; on exit both are back, bit for bit."""
    swap(params, weights)
    try:
        yield
    finally:
        swap(params, weights)
