"""What the flow trainer asks of the engines under it: the Accelerator for the launch
environment, the DeepSpeed settings that cannot be inferred without a dataloader, and
activation checkpointing in a diffusers transformer.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator, InitProcessGroupKwargs
from torch import nn

from adrpo.flow.config import FlowConfig


def default_accelerator(trackers: list[str], output_dir: Path) -> Accelerator:
    """The Accelerator of ``accelerate launch``'s environment; CPU-only without CUDA, except
    that DeepSpeed runs on the CPU over gloo (as the tests do) when the launch asks for it."""
    cuda = torch.cuda.is_available()
    cpu_deepspeed = not cuda and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return Accelerator(
        cpu=not cuda and not cpu_deepspeed, log_with=trackers or None, project_dir=str(output_dir),
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu_deepspeed else None,
    )


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
        raise ValueError(f"gradient_checkpointing: {type(target).__name__} has no enable_gradient_checkpointing()")
    target.enable_gradient_checkpointing()
