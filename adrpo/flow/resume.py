"""Saving and resuming a :class:`adrpo.flow.trainer.FlowTrainer` through accelerate: every
process writes its part of a checkpoint directory that appears whole or not at all, and a
resume loads the newest checkpoint that loads, setting broken newer ones aside.

The files themselves (manifests, interrupted-overwrite repair, pruning) are
:mod:`adrpo.flow.checkpointing`'s; this module adds the collective steps.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object

from adrpo.errors import ConfigError
from adrpo.flow import checkpointing


def save(accelerator: Accelerator, root: Path, step: int, *, keep: int) -> Path:
    """``accelerator.save_state`` into ``root/step-NNNNNNNN`` atomically on every process, then
    keep the newest ``keep`` checkpoints; returns the checkpoint directory."""

    def write(tmp: Path) -> None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        final = checkpointing.write_checkpoint_atomically(root, step, write)
        checkpointing.prune_checkpoints(root, keep)
    else:
        final = checkpointing.checkpoint_dir(root, step)
        write(checkpointing.temporary_dir(root, step))
    accelerator.wait_for_everyone()
    return final


def try_load(accelerator: Accelerator, path: Path) -> str | None:
    """Load ``path`` on every process; None when all did, else what failed, naming the file
    where it can. Every process gets the same answer, so they fall back together.

    A load that fails part-way leaves some of its state behind; loading another checkpoint
    overwrites all of it (model, optimizer, RNG and trainer state; a LoRA base is never loaded).
    """
    problem = checkpointing.manifest_problem(path) or checkpointing.random_states_problem(path, accelerator.process_index)
    if problem is None:
        try:
            accelerator.load_state(str(path))
        except Exception as error:  # any failure makes the checkpoint unusable; the caller reports it
            problem = checkpointing.unreadable_file(path) or f"{type(error).__name__}: {error}"
    problems = gather_object([problem])
    return "; ".join(dict.fromkeys(p for p in problems if p is not None)) or None


def load_newest_intact(accelerator: Accelerator, root: Path) -> Path | None:
    """Load the newest checkpoint under ``root`` that loads; None when there is none at all.

    Newer ones that fail are moved aside with a warning (:func:`checkpointing.set_aside`),
    so that pruning cannot delete the one resumed from; when every checkpoint fails, a
    ConfigError lists them and nothing is moved: starting fresh would overwrite the run.
    """
    if accelerator.is_main_process:
        checkpointing.recover_interrupted_writes(root)
    accelerator.wait_for_everyone()
    failed: list[tuple[Path, str]] = []
    for path in reversed(checkpointing.list_checkpoints(root)):
        problem = try_load(accelerator, path)
        if problem is None:
            if accelerator.is_main_process:
                for broken, why in failed:
                    checkpointing.set_aside(broken, why, resumed_from=path)
            accelerator.wait_for_everyone()
            return path
        failed.append((path, problem))
    if failed:
        listed = "; ".join(f"{broken.name}: {why}" for broken, why in failed)
        raise ConfigError(f"no checkpoint under {root} can be loaded, so the run cannot resume ({listed}). "
                          f"Nothing was changed; to start fresh, overwrite the run (--overwrite, train(overwrite=True)) or use "
                          f"another output_dir, or repair one and pass its path as resume_from_checkpoint")
    return None


def load(accelerator: Accelerator, path: Path) -> None:
    """Load the checkpoint ``path`` (repairing an interrupted overwrite of it first); a
    missing or broken one raises a ConfigError naming it and the file."""
    if accelerator.is_main_process:
        checkpointing.recover_overwrite(path)
    accelerator.wait_for_everyone()
    if not path.is_dir():
        raise ConfigError(f"no checkpoint directory at {path}")
    problem = try_load(accelerator, path)
    if problem is not None:
        raise ConfigError(f"checkpoint {path} cannot be loaded: {problem}")
