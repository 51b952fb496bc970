"""FSDP on a machine without CUDA, for both trainers (and so for tests on 2 CPU processes over gloo).

accelerate 1.15 selects FSDP for GPU-like launches only: ``accelerate launch --use_fsdp`` on CPU
processes gives plain DDP (``MULTI_CPU``) and parameters that stay whole. :func:`fsdp_on_cpu` gives
such an Accelerator the state accelerate gives a GPU launch with ``--use_fsdp``; from there
``prepare``, ``clip_grad_norm_``, ``save_state`` / ``load_state`` and ``get_state_dict`` take
accelerate's own FSDP2 code, which runs on a CPU device mesh. With CUDA it does nothing.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, DistributedType, FullyShardedDataParallelPlugin, PartialState


def fsdp_on_cpu(accelerator: Accelerator) -> bool:
    """Switch ``accelerator`` to FSDP with the launch's plugin (its ``FSDP_*`` variables) when the launch asked
    for FSDP (``ACCELERATE_USE_FSDP``) on CPU processes (``MULTI_CPU``); returns whether it did."""
    requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if torch.cuda.is_available() or not requested or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP  # its own shared state, read by accelerate's utilities
    return True
