"""The flow trainer under FSDP2 (accelerate's ``fsdp_version: 2``, torch's ``fully_shard``).

FSDP2 shards each parameter in place: the module keeps its class and names, each parameter
becomes a DTensor holding this process's rows, and a forward call gathers the whole weights
of a wrapped block, runs it and frees them again. So the trainer samples, computes the
reference and the loss through the same module as under DDP, on every process (a forward is a
collective: every process calls it the same number of times). What changes:

- the frozen copies (the full fine-tuning reference and the moving reference's base) are
  sharded the same way as the policy, with accelerate's own FSDP2 preparation, and hold no
  optimizer state;
- weights the trainer swaps into the policy (the sampling snapshot, the LoRA reference
  adapters) are exchanged by an in-place copy of the local shards
  (:func:`adrpo.flow.reference.swap`): FSDP2 gathers from the storage it sharded, which a
  pointer swap (``param.data = ...``) would leave behind;
- FSDP2 keeps the outermost module's weights gathered after a forward, for the backward that
  normally follows; after forwards without one (sampling, the reference and base velocities)
  :func:`resharded` frees them, so the next forward gathers the weights as they are then
  (after an optimizer step or a swap) instead of reusing stale whole copies;
- what the trainer state saves of those tensors (the snapshot, the moving reference) is the
  whole tensor, gathered on every process, and a load copies each process's rows back.

accelerate selects FSDP only for GPU-like launches; :func:`shard_on_cpu` lets a CPU launch over
gloo (``accelerate launch --multi_gpu --use_fsdp --fsdp_version 2`` without CUDA) take the same
path, as the tests do. Tensors that are not DTensors pass through every function unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator, DistributedType, FullyShardedDataParallelPlugin, PartialState
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor


def cpu_fsdp_requested() -> bool:
    """``accelerate launch --use_fsdp`` on a machine without CUDA."""
    return not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def shard_on_cpu(accelerator: Accelerator) -> None:
    """Switch a multi-process CPU Accelerator (gloo, ``MULTI_CPU``) to FSDP with the launch's plugin
    (``FSDP_*`` variables), the state accelerate itself gives a GPU launch with ``--use_fsdp``. From
    here ``prepare``, ``clip_grad_norm_``, ``save_state`` / ``load_state`` and ``get_state_dict`` take
    accelerate's FSDP2 code, which runs on a CPU mesh."""
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP  # its own shared state, read by accelerate's utilities


def shard_frozen(accelerator: Accelerator, module: nn.Module) -> nn.Module:
    """A frozen module sharded the way ``accelerator.prepare`` shards the policy, without registering
    it for checkpoints or giving it an optimizer; unchanged outside FSDP2."""
    if not accelerator.is_fsdp2:
        return module
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, module)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every process calls it), else ``tensor``."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def copy_whole_(target: torch.Tensor, value: torch.Tensor) -> None:
    """``target.copy_(value)`` for a whole ``value`` (the same on every process): a DTensor target
    takes its own rows, with no communication."""
    if isinstance(target, DTensor) and not isinstance(value, DTensor):
        value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    target.copy_(value)


@contextmanager
def resharded(module: nn.Module) -> Iterator[None]:
    """Forwards without a backward inside the block; on exit every FSDP2 group of ``module`` is
    resharded (nothing to do for a module FSDP2 does not shard)."""
    try:
        yield
    finally:
        if isinstance(module, FSDPModule):
            for part in module.modules():
                if isinstance(part, FSDPModule):
                    part.reshard()
