"""What the flow trainer asks of the engines under it: the Accelerator for the launch
environment, the engines it runs on (DDP, DeepSpeed ZeRO-1/2, FSDP2), the DeepSpeed settings
that cannot be inferred without a dataloader, activation checkpointing in a diffusers
transformer, and the calls an optimizer step is made of.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType, InitProcessGroupKwargs
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn

from adrpo.cpu_fsdp import fsdp_on_cpu
from adrpo.errors import ConfigError
from adrpo.flow.config import FlowConfig


def default_accelerator(trackers: list[str], output_dir: Path) -> Accelerator:
    """The Accelerator of ``accelerate launch``'s environment; CPU-only without CUDA, except
    that DeepSpeed and FSDP2 run on the CPU over gloo (as the tests do) when the launch asks for them."""
    cuda = torch.cuda.is_available()
    cpu_deepspeed = not cuda and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(
        cpu=not cuda and not cpu_deepspeed, log_with=trackers or None, project_dir=str(output_dir),
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu_deepspeed else None,
    )
    fsdp_on_cpu(accelerator)
    return accelerator


def unwrap(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The module inside accelerate's DDP wrapper. ``Accelerator.unwrap_model`` imports DeepSpeed
    whenever it is installed (and DeepSpeed's import logs an accelerator warning on machines
    without CUDA), so it is asked only in a DeepSpeed run."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.unwrap_model(model)
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def check_engine(accelerator: Accelerator) -> None:
    """Refuse FSDP1 (``fsdp_version: 1`` wraps the module in a class whose flat parameters the snapshot
    and reference swaps cannot address). FSDP2 and DeepSpeed ZeRO-3 shard each parameter in place,
    which the trainer reads and writes through :mod:`adrpo.flow.sharding`."""
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError("fsdp_version: 1: the flow trainer runs on FSDP2; set fsdp_version: 2 in the accelerate config")


def check_trainable_precision(params: list[nn.Parameter], accelerator: Accelerator, *, lora_rank: int) -> None:
    """Refuse training half-precision weights with plain AdamW: an update smaller than half a
    bfloat16 step (~0.4 % of the weight) rounds away, so small learning rates train nothing.
    DeepSpeed keeps float32 master weights of its own and is let through."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return
    half = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype in (torch.bfloat16, torch.float16)})
    if not half:
        return
    fix = ("load the model in float32 (text_to_image: task_args.dtype: float32; accelerate's mixed_precision: bf16 still "
           "computes in bf16) or train LoRA adapters (lora_rank > 0, they stay float32)" if lora_rank == 0
           else "keep the LoRA adapters in float32")
    raise ConfigError(f"lora_rank = {lora_rank}: the trainable weights are {', '.join(half)}, and AdamW on them rounds "
                      f"small updates away; {fix}")


def adamw(params: list[nn.Parameter], config: FlowConfig) -> torch.optim.AdamW:
    """torch's AdamW with the config's learning rate and weight decay, on its multi-tensor
    (``foreach``) implementation on every device.

    torch picks that implementation by itself on CUDA only; on a CPU it loops over the parameters
    in Python, a dozen dispatched ops each. Inside a step of the digits model (20 tensors, moments
    cold from memory) that is 0.05–0.08 ms of a ~1.2 ms ``step()`` (``benchmarks/flow_optimizer.py``).
    The update is elementwise and the multi-tensor ops run the same kernels per tensor,
    so every weight is bit for bit what the loop gives (``tests/test_step_equivalence.py``).
    """
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=True)


def configure_deepspeed(accelerator: Accelerator, config: FlowConfig) -> None:
    """Fill what DeepSpeed needs and cannot infer without a dataloader: the micro-batch size,
    and gradient clipping from ``max_grad_norm`` where the DeepSpeed config leaves it "auto"."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds_config = plugin.deepspeed_config
    if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds_config["train_micro_batch_size_per_gpu"] = config.micro_batch_size or config.prompts_per_step * config.group_size
    clipping = ds_config.get("gradient_clipping", "auto")
    if clipping == "auto":
        ds_config["gradient_clipping"] = config.max_grad_norm or 0.0
    elif float(clipping) != (config.max_grad_norm or 0.0):
        warnings.warn(f"the DeepSpeed config clips gradients at {clipping}; max_grad_norm={config.max_grad_norm} is not used", stacklevel=3)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation recomputation in a velocity model's diffusers transformer."""
    target = getattr(model, "transformer", model)
    if not hasattr(target, "enable_gradient_checkpointing"):
        raise ConfigError(f"gradient_checkpointing: {type(target).__name__} has no enable_gradient_checkpointing()")
    target.enable_gradient_checkpointing()


def wrappers_reduce_to_torch(accelerator: Accelerator) -> bool:
    """Whether accelerate's clip_grad_norm_ and optimizer step and zero_grad do exactly what
    torch's own calls do: in one process without a GradScaler.

    There, in accelerate 1.15, ``clip_grad_norm_`` unscales only under fp16's GradScaler, and its
    DTensor-aware path calls ``torch.nn.utils.clip_grad_norm_`` on the same parameters unless the
    gradients are DTensors on more than one device mesh, which takes a distributed launch.
    ``AcceleratedOptimizer.step`` looks LOMO up twice (importlib) and, with gradients in sync
    (always, outside the trainer's micro-batch loop), steps the wrapped optimizer, which is
    torch's AdamW; ``zero_grad`` inspects the wrapped one's signature, then calls it. DDP,
    DeepSpeed (whose engine steps and clips itself), FSDP, XLA and fp16 keep accelerate's calls.
    """
    return accelerator.distributed_type == DistributedType.NO and accelerator.scaler is None


@dataclass(frozen=True)
class StepCalls:
    """How a training step clips the gradients and which optimizer object it steps and zeroes."""

    clip_grad_norm_: Callable[[list[nn.Parameter], float], torch.Tensor | float | None]  # DeepSpeed: a float or None
    optimizer: torch.optim.Optimizer


def clip_grad_norm_(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` without its multiplication by exactly 1 when the norm
    is within ``max_norm`` and the gradients are on the CPU, where reading the norm costs no sync.

    torch documents clip_grad_norm_ as get_total_norm followed by clip_grads_with_norm_, which
    multiplies every gradient by min(max_norm / (norm + 1e-6), 1): by 1.0, which changes no bit,
    unless the minimum is below 1. Skipping it saves ~0.08 ms per step of the digits model on a CPU.
    There the norm is also taken by one multi-tensor call (the same kernel per gradient, so the
    same bits) instead of get_total_norm's loop.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads and all(g.device.type == "cpu" for g in grads):
        # get_total_norm's own loop on a CPU: one norm per gradient in Python
        total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    else:
        total_norm = torch.nn.utils.get_total_norm(grads)
    # != rather than <: a NaN norm makes every gradient NaN in torch's clip, and so here
    if total_norm.device.type != "cpu" or torch.clamp(max_norm / (total_norm + 1e-6), max=1.0).item() != 1.0:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm)
    return total_norm


def step_calls(accelerator: Accelerator, optimizer: AcceleratedOptimizer) -> StepCalls:
    """torch's calls where :func:`wrappers_reduce_to_torch` says accelerate's add nothing (0.3 ms
    less per step of the digits model on a CPU, two thirds of it the optimizer's), else accelerate's."""
    if wrappers_reduce_to_torch(accelerator):
        return StepCalls(clip_grad_norm_, optimizer.optimizer)
    return StepCalls(accelerator.clip_grad_norm_, optimizer)
