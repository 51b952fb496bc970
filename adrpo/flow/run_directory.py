"""One run per directory: what makes ``output_dir`` hold a run, the configuration saved in it,
and the checks :meth:`adrpo.flow.trainer.FlowTrainer.train` makes before it starts.

- A fresh start refuses a directory that holds a run (:func:`run_files`: ``config.json``,
  ``metrics.jsonl``, ``alarms.jsonl`` or anything under ``checkpoints/``) unless told to
  overwrite it, which deletes those files first; otherwise the new run's metrics would stand
  beside the old run's checkpoints, and pruning would delete the new run's first checkpoint.
  Trackers' files are not run files: the trainer's trackers open theirs when it is built,
  before :meth:`train` is called (TensorBoard also writes an ``hparams.yml`` per trainer, with
  lists as text), and an overwrite leaves the old run's beside them; so does it leave what a
  task writes there (image grids, diffusers exports, which the new run writes again).
- Every start writes ``config.json``, the run's :class:`FlowConfig`, atomically, once a resume
  has loaded its checkpoint (a resume that fails changes nothing).
- A resume compares the configuration with ``config.json`` and refuses one whose
  result-changing settings differ, naming each field with its saved and new value. Which fields
  cannot change the result is declared in :data:`RESULT_NEUTRAL`; every other field is compared,
  except that ``num_steps`` may grow. ``allow_changes`` names fields whose change is accepted
  anyway (with a warning), e.g. a smaller ``micro_batch_size`` after running out of memory,
  which changes only the rounding of the gradient. A field missing from an older
  ``config.json`` is compared with its default; a run directory without one (written before
  this check existed) is resumed unchecked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adrpo.errors import ConfigError
from adrpo.flow.config import FlowConfig

CONFIG_NAME = "config.json"
RUN_FILES = (CONFIG_NAME, "metrics.jsonl", "alarms.jsonl")
CHECKPOINTS = "checkpoints"

# FlowConfig fields that cannot change the weights of any step, and why; every other field is compared.
RESULT_NEUTRAL: dict[str, str] = {
    "output_dir": "where the run's files are (a moved run resumes)",
    "logging_steps": "which steps' metrics are written; every step computes the same",
    "checkpoint_steps": "when checkpoints are saved; saving draws no random number",
    "keep_checkpoints": "how many checkpoints stay on disk",
    "report_to": "which trackers receive the rows",
    "progress_bar": "display only",
    "monitor": "what an alarm does; the alarms already raised are replayed on resume, so a stopped run may go on "
               "under 'warn'",
    "monitor_thresholds": "when an alarm is raised (see monitor)",
    "gradient_checkpointing": "recomputes the same activations in the backward pass",
    "fsdp_gather_for_sampling": "when FSDP2 gathers the same weights",
}
MAY_GROW = ("num_steps",)


def run_files(directory: Path) -> list[str]:
    """The run files ``directory`` holds (``checkpoints/`` when it has any entry); [] for none."""
    found = [name for name in RUN_FILES if (directory / name).exists()]
    checkpoints = directory / CHECKPOINTS
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append(f"{CHECKPOINTS}/")
    return found


def clear_run(directory: Path) -> None:
    """Delete the run files of ``directory`` (see :func:`run_files`); trackers' files stay."""
    for name in RUN_FILES:
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)


def check_fresh_start(directory: Path, *, overwrite: bool) -> None:
    """Refuse to start a new run in ``directory`` while it holds one, unless ``overwrite``."""
    found = run_files(directory)
    if found and not overwrite:
        raise ConfigError(
            f"{directory} already holds a run ({', '.join(found)}): resume it (--resume, "
            f"train(resume_from_checkpoint=True)), or replace it (--overwrite, train(overwrite=True)), or choose "
            f"another output_dir")


def save_config(directory: Path, config: FlowConfig) -> None:
    """Write ``directory/config.json`` (every FlowConfig field) atomically: whole or not at all."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / CONFIG_NAME
    tmp = final.with_name(f".tmp-{CONFIG_NAME}")
    with open(tmp, "w") as handle:
        json.dump(config.to_dict(), handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def saved_config(directory: Path) -> dict[str, Any] | None:
    """The configuration in ``directory/config.json``; None without one."""
    path = directory / CONFIG_NAME
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path} cannot be read ({error}); it holds the run's configuration") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object (the run's configuration)")
    return values


def changed_settings(saved: dict[str, Any], config: FlowConfig) -> list[tuple[str, Any, Any]]:
    """(field, saved value, new value) of every compared field of ``config`` that differs from
    ``saved``: all but :data:`RESULT_NEUTRAL`, with ``num_steps`` only when it shrinks. Fields
    ``saved`` lacks take their defaults (resolved as the config resolves them), fields it has
    that FlowConfig no longer has are ignored."""
    old_values = _completed(saved)
    changes = []
    for name, value in _as_json(config.to_dict()).items():
        if name in RESULT_NEUTRAL:
            continue
        old = old_values.get(name)
        if name in MAY_GROW and old is not None and value >= old:
            continue
        if old != value:
            changes.append((name, old, value))
    return changes


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """The values as config.json gives them back (lists, not tuples)."""
    return json.loads(json.dumps(values))


def _completed(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved``'s FlowConfig fields, the missing ones filled with defaults through FlowConfig
    itself (so ``adv_clip_min`` resolves from the saved ``beta0``); as saved where a value is no
    longer valid."""
    known = {f.name: f for f in dataclasses.fields(FlowConfig)}
    values = {name: value for name, value in saved.items() if name in known}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run's own warnings were given when it started
            return _as_json(FlowConfig.from_dict(values).to_dict())
    except ConfigError:
        for name, f in known.items():
            if name not in values:
                values[name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
        return _as_json(values)


def check_resume(directory: Path, config: FlowConfig, *, allow_changes: Sequence[str] = ()) -> None:
    """Refuse to resume the run in ``directory`` under result-changing settings other than its
    saved ones, naming each field with both values; the fields in ``allow_changes`` may differ
    (a warning lists them). Without ``config.json`` there is nothing to compare."""
    known = {f.name for f in dataclasses.fields(FlowConfig)}
    unknown = sorted(set(allow_changes) - known)
    if unknown:
        raise ConfigError(f"allow_changes: {unknown} are not FlowConfig fields")
    saved = saved_config(directory)
    if saved is None:
        return
    changes = changed_settings(saved, config)
    refused = [change for change in changes if change[0] not in allow_changes]
    if refused:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in refused)
        grow = " (num_steps may only grow)" if any(name in MAY_GROW for name, _, _ in refused) else ""
        raise ConfigError(
            f"{directory} holds a run saved with other settings ({directory / CONFIG_NAME}): {listed}{grow}. "
            f"Resuming would continue its checkpoint under the new ones; use the saved settings, or start a new run "
            f"in another output_dir (or --overwrite; in an experiment, --force), or accept the change with "
            f"--allow-change FIELD (train(allow_config_changes=[...]))")
    if changes:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changes)
        warnings.warn(f"{directory}: resuming with changed settings (allowed): {listed}", stacklevel=5)  # the train() call
