"""Crash-safe run files: adapter-only model files
in LoRA mode, checkpoint directories that appear whole or not at all, and a metrics JSONL
that a resumed run continues without duplicate or lost lines.

A checkpoint directory ends with ``manifest.json``, the size of every other file, written and
synced after them: it tells a whole checkpoint from one truncated or missing a file without
loading it, and marks a temporary directory as complete. Checkpoints from before the manifest
load as before. An overwrite that crashed between its two renames is repaired by
:func:`recover_overwrite`; a checkpoint that fails to load is moved aside by :func:`set_aside`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from adrpo.errors import ConfigError

CHECKPOINT_PREFIX = "step-"
MANIFEST_NAME = "manifest.json"
BROKEN_PREFIX = "broken-"


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


def _old(final: Path) -> Path:
    """Where an overwrite parks the previous ``final`` between its two renames."""
    return final.parent / f".old-{final.name}"


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def write_manifest(directory: Path) -> None:
    """Write ``directory/manifest.json``: the size of every other file under ``directory``.

    Call it once the files are synced: the manifest is written and synced last, so its
    presence means the whole directory reached the disk.
    """
    sizes = {str(f.relative_to(directory)): f.stat().st_size for f in sorted(directory.rglob("*"))
             if f.is_file() and f != directory / MANIFEST_NAME}
    with open(directory / MANIFEST_NAME, "w") as handle:
        json.dump({"files": sizes}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def manifest_problem(directory: Path) -> str | None:
    """What ``directory/manifest.json`` says is wrong with ``directory`` (a listed file missing
    or of another size), naming the file; None when it matches or there is no manifest."""
    manifest = directory / MANIFEST_NAME
    if not manifest.exists():
        return None
    try:
        sizes = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST_NAME} cannot be read ({type(error).__name__}: {error})"
    for name, size in sizes.items():
        file = directory / name
        if not file.is_file():
            return f"{name} is missing ({MANIFEST_NAME} lists it)"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {MANIFEST_NAME} says {size} (truncated or overwritten?)"
    return None


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a manifest that all its listed files match."""
    return (directory / MANIFEST_NAME).is_file() and manifest_problem(directory) is None


def random_states_problem(checkpoint: Path, process_index: int) -> str | None:
    """Why this process's RNG file in ``checkpoint`` cannot be loaded, or None.

    ``accelerator.load_state`` skips an unreadable RNG file with an info log and carries on,
    which would make a resumed run silently differ; this checks it with the same loader.
    """
    from accelerate.utils import load
    from accelerate.utils.constants import RNG_STATE_NAME

    name = f"{RNG_STATE_NAME}_{process_index}.pkl"
    if not (checkpoint / name).is_file():
        return f"{name} is missing"
    try:
        load(checkpoint / name)
    except Exception as error:  # whatever accelerate's own load would have swallowed
        return f"{name} cannot be read ({type(error).__name__}: {error})"
    return None


def unreadable_file(directory: Path) -> str | None:
    """The first file under ``directory`` that does not parse, as ``"name cannot be read
    (error)"``; None when all do. Used to name the culprit after a failed load: safetensors
    headers are checked against the file size, torch archives are opened memory-mapped."""
    from safetensors import safe_open

    for file in sorted(f for f in directory.rglob("*") if f.is_file()):
        name = str(file.relative_to(directory))
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as handle:
                    handle.keys()
            elif file.suffix in (".bin", ".pkl", ".pt"):
                if not zipfile.is_zipfile(file):
                    return f"{name} cannot be read (not a whole torch.save archive: no zip directory at its end)"
                torch.load(file, map_location="cpu", weights_only=False, mmap=True)
        except Exception as error:  # any parse failure names the file
            return f"{name} cannot be read ({type(error).__name__}: {error})"
    return None


def write_checkpoint_atomically(root: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)``, add the manifest, then rename ``tmp_dir`` to ``root/step-NNNNNNNN``.

    A crash inside ``write`` leaves only a hidden ``.tmp-*`` directory, which
    :func:`latest_checkpoint` ignores; the previous checkpoint stays usable.
    """
    return write_dir_atomically(checkpoint_dir(root, step), write, manifest=True)


def write_dir_atomically(final: Path, write: Callable[[Path], None], *, manifest: bool = False) -> Path:
    """Call ``write(tmp_dir)`` beside ``final``, sync it, then rename it to ``final``; an
    existing ``final`` is replaced only once the new directory is complete.

    With ``manifest``, ``manifest.json`` is written last (see :func:`write_manifest`), which
    lets :func:`recover_overwrite` keep the new directory after a crash between the renames.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_overwrite(final)
    tmp = _temporary(final)
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    _fsync_tree(tmp)
    if manifest:
        write_manifest(tmp)
    if final.exists():
        old = _old(final)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def recover_overwrite(final: Path) -> None:
    """Repair what a crash during :func:`write_dir_atomically`'s overwrite of ``final`` left.

    ``.old-X`` beside an existing ``X``: the new directory is in place, the old one is deleted.
    ``.old-X`` without ``X`` (a crash between the two renames): a complete ``.tmp-X`` (its
    manifest matches) is the new version and is moved into place, else ``.old-X`` is restored.
    A ``.tmp-X`` without a manifest may be a crash inside ``write``, so it is never promoted.
    """
    old = _old(final)
    if not old.is_dir():
        return
    if final.exists():
        shutil.rmtree(old)
        return
    tmp = _temporary(final)
    if is_complete(tmp):
        os.replace(tmp, final)
        shutil.rmtree(old)
        warnings.warn(f"{final}: an overwrite was interrupted after the new version was complete; "
                      f"moved {tmp.name} into place and deleted the previous version {old.name}", stacklevel=2)
    else:
        os.replace(old, final)
        warnings.warn(f"{final}: an overwrite was interrupted before the new version was in place; "
                      f"restored the previous version from {old.name}", stacklevel=2)


def recover_interrupted_writes(root: Path) -> None:
    """:func:`recover_overwrite` every checkpoint under ``root`` that has an ``.old-*`` sibling."""
    if root.is_dir():
        for old in sorted(root.glob(f".old-{CHECKPOINT_PREFIX}*")):
            recover_overwrite(root / old.name[len(".old-"):])


def set_aside(checkpoint: Path, problem: str, resumed_from: Path) -> Path:
    """Rename a checkpoint that failed to load to ``broken-step-NNNNNNNN`` (kept for
    inspection, no longer listed, pruned or resumed) and warn, naming it and the problem.

    Left in place it would count as the newest when pruning and could push out the intact
    checkpoint the run resumed from.
    """
    target = checkpoint.parent / f"{BROKEN_PREFIX}{checkpoint.name}"
    copy = 1
    while target.exists():
        copy += 1
        target = checkpoint.parent / f"{BROKEN_PREFIX}{checkpoint.name}.{copy}"
    os.replace(checkpoint, target)
    warnings.warn(f"checkpoint {checkpoint} cannot be loaded: {problem}; resuming from {resumed_from.name}, "
                  f"the newest intact checkpoint, and moved the broken one to {target.name}", stacklevel=2)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and stale temporaries (after
    :func:`recover_interrupted_writes`, so an interrupted overwrite is counted, not lost)."""
    recover_interrupted_writes(root)
    for path in list_checkpoints(root)[:-keep]:
        shutil.rmtree(path)
    for path in root.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name[len(CHECKPOINT_PREFIX):])


class MetricsLog:
    """Append-only JSONL of ``{"step": s, ...}`` rows, flushed per row.

    A crash in the middle of an append leaves a partial last line: :meth:`read` and
    :meth:`truncate_after` drop a last line that does not parse, with a warning naming the file
    (that step is logged again by the resumed run, whose checkpoint is older than the row). A
    line that does not parse anywhere else is no interrupted append, and raises a ConfigError
    naming the file and the line number.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they will be logged again by a resumed run), and a
        partial last line."""
        if not self.path.exists():
            return
        kept = [line for line, row in self._parsed() if row["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def read(self) -> list[dict]:
        """Every row, in file order; a partial last line is left out (see the class docstring)."""
        if not self.path.exists():
            return []
        return [row for _, row in self._parsed()]

    def _parsed(self) -> list[tuple[str, dict]]:
        """(line, row) of every non-empty line that parses; a last one that does not is dropped."""
        numbered = [(number, line) for number, line in enumerate(self.path.read_text().splitlines(), 1) if line]
        parsed = []
        for index, (number, line) in enumerate(numbered):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "step" not in row:
                    raise ValueError(f"not a row with a 'step': {line[:80]!r}")
            except ValueError as error:  # json.JSONDecodeError is a ValueError
                if index < len(numbered) - 1:
                    raise ConfigError(f"{self.path}: line {number} is not a metrics row ({error}); only a last line "
                                      f"can be left partial by a crash, so this file was edited or damaged") from error
                warnings.warn(f"{self.path}: dropped its last line {number}, which does not parse (an append "
                              f"interrupted by a crash?): {line[:80]!r}", stacklevel=3)
                break
            parsed.append((line, row))
        return parsed
