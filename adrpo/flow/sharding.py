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
  :func:`adrpo.fsdp_gathering.no_grad_forwards` frees them, so the next forward gathers the weights as they are then
  (after an optimizer step or a swap) instead of reusing stale whole copies. With the config's
  ``fsdp_gather_for_sampling`` a sampling pass keeps every unit gathered from its first Euler step
  to its last: one all-gather of the model per pass instead of one per Euler step;
- what the trainer state saves of those tensors (the snapshot, the moving reference) is the
  whole tensor, gathered on every process, and a load copies each process's rows back.

accelerate selects FSDP only for GPU-like launches; :func:`adrpo.cpu_fsdp.fsdp_on_cpu` lets a CPU
launch over gloo (``accelerate launch --use_fsdp --fsdp_version 2`` without CUDA) take the same
path, as the tests do.

DeepSpeed ZeRO-3 partitions the same parameters differently: each keeps its class and name, its
``data`` is empty outside a forward and this process's rows are ``param.ds_tensor`` (the flat
tensor cut in ``world_size`` equal pieces, the last padded), which the optimizer writes after a
step; hooks gather whole weights for a module's forward and may keep them gathered (the
"persistent" small parameters always). So the trainer reads and writes ZeRO-3 weights through
their rows (:func:`local`), after a write drops the gathered copies and gathers the persistent
ones again (:func:`refresh`), gathers whole tensors with :func:`whole_rows` and scatters them with
:func:`copy_whole_rows_`; the frozen copies are partitioned by an optimizer-less DeepSpeed engine
(:func:`shard_frozen`), as TRL's ``prepare_deepspeed`` does for its reference model.

Tensors that are neither DTensors nor ZeRO-3 parameters pass through every function unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from accelerate import Accelerator
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


def zero3(accelerator: Accelerator) -> bool:
    """Whether the launch partitions parameters with DeepSpeed ZeRO-3."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def shard_frozen(accelerator: Accelerator, module: nn.Module) -> nn.Module:
    """A frozen module sharded the way ``accelerator.prepare`` shards the policy, without registering
    it for checkpoints or giving it an optimizer; unchanged outside FSDP2 and ZeRO-3."""
    if accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, module)
    if zero3(accelerator):
        import deepspeed

        config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        for training_only in ("optimizer", "scheduler"):  # no optimizer is given: DeepSpeed must not build one
            config.pop(training_only, None)
        config["zero_optimization"].pop("offload_optimizer", None)
        engine, *_ = deepspeed.initialize(model=module, config=config)  # its hooks on the module's parts gather for a forward
        return engine.module
    return module


def is_zero3_param(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "ds_tensor")


def local(param: torch.Tensor) -> torch.Tensor:
    """The weights of ``param`` this process holds and writes: ZeRO-3's rows (``ds_tensor``, flat), else
    the detached parameter (a DTensor, sharded, under FSDP2)."""
    return param.ds_tensor if is_zero3_param(param) else param.detach()


def refresh(params: Iterable[torch.Tensor]) -> None:
    """After ZeRO-3 rows of ``params`` were written in place: free the whole copies gathered from the
    old rows and gather the persistent parameters again, as DeepSpeed does after an optimizer step.
    Every process calls it with the same parameters; others are left alone."""
    partitioned = [p for p in params if is_zero3_param(p)]
    if not partitioned:  # DeepSpeed is imported only where it partitions something
        return
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gathered = [p for p in partitioned if p.ds_status == ZeroParamStatus.AVAILABLE]
    if gathered:
        gathered[0].partition(gathered)
    persistent = [p for p in partitioned if p.ds_persist]
    if persistent:
        persistent[0].all_gather(persistent)


def gathered(params: list[nn.Parameter]) -> AbstractContextManager:
    """Inside the block ZeRO-3 ``params`` hold their whole weights (read-only); a no-op otherwise."""
    if not any(is_zero3_param(p) for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def whole_rows(rows: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The whole tensor (``param``'s shape) of ``rows`` held like :func:`local` of ``param``: a
    collective under FSDP2 and ZeRO-3 (every process calls it), else ``rows``."""
    if not is_zero3_param(param):
        return whole(rows)
    import deepspeed.comm as dist

    pieces = [torch.empty_like(rows) for _ in range(dist.get_world_size(group=param.ds_process_group))]
    dist.all_gather(pieces, rows.contiguous(), group=param.ds_process_group)
    return torch.cat(pieces)[: param.ds_numel].view(param.ds_shape)


def copy_whole_rows_(rows: torch.Tensor, value: torch.Tensor, param: torch.Tensor) -> None:
    """Write a whole ``value`` (``param``'s shape, the same on every process) into ``rows`` held like
    :func:`local` of ``param``: each process takes its own rows, with no communication."""
    if not is_zero3_param(param):
        copy_whole_(rows, value)
        return
    import deepspeed.comm as dist

    start = rows.numel() * dist.get_rank(group=param.ds_process_group)
    mine = value.reshape(-1)[start : start + rows.numel()]
    rows.zero_()  # the padding past the last weight
    rows[: mine.numel()].copy_(mine)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every process calls it), else ``tensor``."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def copy_whole_(target: torch.Tensor, value: torch.Tensor) -> None:
    """``target.copy_(value)`` for a whole ``value`` (the same on every process): a DTensor target
    takes its own rows, with no communication."""
    if isinstance(target, DTensor) and not isinstance(value, DTensor):
        value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    target.copy_(value)


def whole_state_dict(module: nn.Module, *, keep: bool) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` as whole CPU tensors, gathered one parameter at a time (a collective under
    FSDP2 and ZeRO-3: every process calls it); held only where ``keep`` (the process that writes them),
    so no process holds more than the whole model once."""
    names = set(module.state_dict())  # persistent entries only; the values of sharded ones are not whole
    state = {}
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if name not in names:
            continue
        with gathered([tensor] if isinstance(tensor, nn.Parameter) else []):
            value = whole(tensor.detach())
            if keep:
                state[name] = value.cpu().clone()
    return state
