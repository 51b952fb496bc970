"""What every benchmark prints beside its ratio: the machine and the commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def git_commit() -> str:
    """Short commit of this checkout, marked when the tree has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (uncommitted changes)" if dirty else commit


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return (
        f"{platform.platform()} | {platform.processor() or platform.machine()} | cpus {os.cpu_count()} | "
        f"torch {torch.__version__} | threads {torch.get_num_threads()} | device {device} | "
        f"load avg {os.getloadavg()[0]:.2f}"
    )


def sync() -> None:
    """Wait for queued GPU work so a timer measures it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
