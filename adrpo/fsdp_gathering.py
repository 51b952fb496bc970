"""Forwards without a backward under FSDP2 (torch's ``fully_shard``), shared by both trainers: the flow
trainer's sampling, reference and base passes, and generation in the LLM trainers.

FSDP2 gathers a sharding unit's whole weights for each of its forwards and, except for the outermost
module's, frees them after it. A pass of many forwards without a backward (S Euler steps, or one forward per
generated token) so all-gathers every unit S times. :func:`no_grad_forwards` can keep the units gathered for
the whole pass instead, and always reshards them at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from torch import nn
from torch.distributed.fsdp import FSDPModule


@contextmanager
def no_grad_forwards(module: nn.Module, *, keep_gathered: bool = False) -> Iterator[None]:
    """Forwards of ``module`` without a backward inside the block (sampling, the reference and base
    velocities, generation); nothing is done for a module FSDP2 does not shard (not even a walk over its parts:
    the flow trainer enters this a few times a step).

    FSDP2 gathers a unit's whole weights for each forward and frees them after it, except the root's,
    which it keeps for the backward that normally follows. With ``keep_gathered`` every unit keeps its
    weights from its first forward to the end of the block, so a sampler of S Euler steps all-gathers
    each block once instead of S times, holding one whole copy of ``module`` meanwhile (what TRL's
    ``ds3_gather_for_generation`` trades under ZeRO-3); each unit's own setting is restored on exit.
    On exit every unit is resharded, the root too, so the next forward gathers the weights as they
    are then (after an optimizer step or a swap) instead of reusing stale whole copies.
    """
    if not isinstance(module, FSDPModule):  # unsharded (or only its parts are, which accelerate never does)
        yield
        return
    units = [part for part in module.modules() if isinstance(part, FSDPModule)]
    try:
        with _kept_gathered(module, units) if keep_gathered else nullcontext():
            yield
    finally:
        for unit in units:
            unit.reshard()


@contextmanager
def _kept_gathered(root: FSDPModule, units: list[FSDPModule]) -> Iterator[None]:
    """Inside the block no FSDP2 unit of ``root`` (``units``, the root among them) reshards after a forward;
    on exit each unit's ``reshard_after_forward`` is what it was.

    torch has a setter for it (``set_reshard_after_forward``) but no getter, so the values are read from
    and written back to each unit's state (``_auto_reshard_after_forward``, each parameter group's
    ``post_forward_mesh_info``: what the setter writes; torch 2.13). The root decides its own setting at
    its first forward (``_lazy_init``: kept gathered when left to torch's default); that is done first,
    so what is restored is what the forwards after the block would have seen.
    """
    root._get_fsdp_state()._lazy_init()
    states = [unit._get_fsdp_state() for unit in units]
    saved = [(state._auto_reshard_after_forward, [group.post_forward_mesh_info for group in state._fsdp_param_groups])
             for state in states]
    root.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for state, (auto, mesh_infos) in zip(states, saved):
            state._auto_reshard_after_forward = auto
            for group, mesh_info in zip(state._fsdp_param_groups, mesh_infos):
                group.post_forward_mesh_info = mesh_info
