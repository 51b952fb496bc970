"""Crash-safe run files: the trainer state accelerate checkpoints, adapter-only model files
in LoRA mode, checkpoint directories that appear whole or not at all, and a metrics JSONL
that a resumed run continues without duplicate or lost lines.
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


def save_only_trainable(accelerator, model: torch.nn.Module) -> None:
    """Make ``accelerator.save_state`` write only ``model``'s trainable (LoRA) weights, and
    ``load_state`` read them back, checking the names. The frozen base is rebuilt from the
    pipeline on resume, as the reference is: a FLUX checkpoint holds megabytes, not 24 GB.

    DeepSpeed and FSDP save and load the model themselves; there the hooks do nothing.
    """
    from accelerate.utils import SAFE_WEIGHTS_NAME
    from safetensors.torch import load_file

    names = [name for name, param in model.named_parameters() if param.requires_grad]

    def keep_trainable(models: list, weights: list, output_dir: str) -> None:
        for index, candidate in enumerate(models[: len(weights)]):
            if candidate is model:
                weights[index] = {name: weights[index][name] for name in names}

    def load_trainable(models: list, input_dir: str) -> None:
        if not any(candidate is model for candidate in models):
            return
        state = load_file(os.path.join(input_dir, SAFE_WEIGHTS_NAME))
        missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
        if missing or unexpected:
            raise ValueError(f"checkpoint {input_dir}: its weights do not match the model's trainable ones "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved with other LoRA settings?")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in names:
                params[name].copy_(state[name])
        models[:] = [candidate for candidate in models if candidate is not model]

    accelerator.register_save_state_pre_hook(keep_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"{CHECKPOINT_PREFIX}{step:08d}"


def temporary_dir(root: Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place."""
    return _temporary(checkpoint_dir(root, step))


def _temporary(final: Path) -> Path:
    return final.parent / f".tmp-{final.name}"


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
    return write_dir_atomically(checkpoint_dir(root, step), write)


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` beside ``final``, sync it, then rename it to ``final``; an
    existing ``final`` is replaced only once the new directory is complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    _fsync_tree(tmp)
    if final.exists():
        old = final.parent / f".old-{final.name}"
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
