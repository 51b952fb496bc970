"""Crash-safe run files: the trainer state accelerate checkpoints, checkpoint directories
that appear whole or not at all, and a metrics JSONL that a resumed run continues without
duplicate or lost lines.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PREFIX = "step-"


class TrainerState:
    """What the trainer must remember across a restart (accelerate checkpoints it).

    The random generator and the prompt order are per process; before a save the trainer
    gathers every process's into ``gathered`` so that each one resumes its own stream.
    """

    def __init__(self, num_prompts: int, generator: torch.Generator, process_index: int):
        self.step = 0
        self.generator = generator
        self.process_index = process_index
        self.order = self.permutation(num_prompts)
        self.cursor = 0
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.gathered: list[dict[str, Any]] = []

    def permutation(self, n: int) -> list[int]:
        """A fresh random order of n prompts (a Python list: no device sync per prompt)."""
        return torch.randperm(n, generator=self.generator, device=self.generator.device).tolist()

    def local_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": list(self.order), "cursor": self.cursor}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "snapshot": self.snapshot, "processes": self.gathered or [self.local_state()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.generator.device
        mine = state["processes"][self.process_index]
        self.step = state["step"]
        self.generator.set_state(mine["generator"])
        self.order = list(mine["order"])
        self.cursor = mine["cursor"]
        if state["snapshot"] is not None:
            self.snapshot = {name: value.to(device) for name, value in state["snapshot"].items()}


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"{CHECKPOINT_PREFIX}{step:08d}"


def temporary_dir(root: Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place."""
    return root / f".tmp-{checkpoint_dir(root, step).name}"


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def write_checkpoint_atomically(root: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)``, then rename ``tmp_dir`` to ``root/step-NNNNNNNN``.

    A crash inside ``write`` leaves only a hidden ``.tmp-*`` directory, which
    :func:`latest_checkpoint` ignores; the previous checkpoint stays usable.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = temporary_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    _fsync_tree(tmp)
    if final.exists():
        old = root / f".old-{final.name}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and stale temporaries."""
    for path in list_checkpoints(root)[:-keep]:
        shutil.rmtree(path)
    for path in root.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name[len(CHECKPOINT_PREFIX):])


class MetricsLog:
    """Append-only JSONL of ``{"step": s, ...}`` rows, flushed per row."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they will be logged again by a resumed run)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
