"""The end of a distributed launch, so that a run that finished exits 0.

An FSDP2 model keeps its device mesh, and through it the process group, in reference cycles: they
outlive the function that built the trainer and only the cycle collector frees them. Left to Python's
own exit, they are freed inside its finalization, where torch 2.13's gloo group aborts the process
about one exit in five ("terminate called without an active exception", SIGABRT, after every file was
written; measured on a 2-process FSDP2 script: 8 aborts in 30 exits, 0 in 30 with the collection
first). A launcher then reports the run as failed. :func:`end_distributed` frees them while the
interpreter is whole.
"""

from __future__ import annotations

import gc
import sys


def end_distributed() -> None:
    """Destroy the default process group if one is up, then collect the cycles that hold it.

    Call it where nothing refers to the trainer any more (after the function that held it returned);
    the process group must not be needed after it. Without torch imported it only collects."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
