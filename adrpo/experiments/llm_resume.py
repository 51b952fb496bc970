"""An LLM run of the experiment engine that was interrupted resumes from its newest finished checkpoint, exactly.

TRL's checkpoints (``checkpoint-N``, with :class:`adrpo.llm.resume.ExactResume`) restore the model, optimizer,
scheduler, RNG states, sampler and generation buffer, and ``trainer_state.json`` holds the logged rows. Two
things of a run live only in the engine's callbacks, and are carried here:

- the held-out evaluations so far. :class:`ResumableEvaluation` wraps the task's
  :class:`adrpo.llm.callbacks.HeldOutEvaluation` as a transformers ``ExportableState``, so its trajectory is
  written inside each checkpoint's ``trainer_state.json`` (with the state, not beside it: a checkpoint whose
  state reads back has them). On resume the trajectory is restored, and the resumed step is not evaluated again.
- the collapse monitor's memory (each metric's base, streaks, fired rules) and ``alarms.jsonl``: the monitor is
  reset with the restored evaluations and the checkpoint's logged rows, in the order an uninterrupted run fed
  them (:func:`monitor_rows`).

A checkpoint saved where the run had ended (its last step, or the step at which the monitor's ``stop`` policy
stopped it), its result not yet written, is not trained from: TRL would train one step past it (transformers
checks ``max_steps`` only after a step), and nothing tells it about the stop. The result is built from the
checkpoint's state instead (:func:`training_ended`).

Cadence (:func:`checkpoint_settings`): a checkpoint every ``eval.steps`` steps, the newest one kept
(``save_total_limit: 1``), and none once the run's result is saved (:func:`drop_checkpoints`). A run directory at
rest holds what it held before runs were checkpointed; a run in progress, one checkpoint. A spec's own
``save_strategy``, ``save_steps`` or ``save_total_limit`` wins (and, as any trainer field, enters the identity).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerState
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from adrpo.llm.resume import TRAINER_STATE, reached_max_steps


def checkpoint_settings(eval_steps: int) -> dict[str, Any]:
    """The TrainingArguments of the engine's LLM checkpoints: one every ``eval_steps`` steps, the newest kept."""
    return {"save_strategy": "steps", "save_steps": eval_steps, "save_total_limit": 1}


def training_ended(state: TrainerState, monitor: Any | None) -> bool:
    """Whether the run saved in ``state`` had ended there: at its last step, or stopped by the collapse monitor
    (``monitor``, a CollapseMonitorCallback already restored from ``state``, under policy ``stop``)."""
    stopped = monitor is not None and monitor.monitor.policy == "stop" and bool(monitor.alarms)
    return reached_max_steps(state, state.max_steps) or stopped


def drop_checkpoints(directory: Path) -> None:
    """Remove the run's ``checkpoint-N`` folders (its result is saved: nothing resumes from them)."""
    for path in directory.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if path.is_dir():
            shutil.rmtree(path)


def monitor_rows(trajectory: list[dict[str, Any]], log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a run fed its collapse monitor up to a checkpoint, in the run's order: the evaluations (keys
    ``eval/<metric>``) and the logged rows by step, at one step the evaluation (``on_step_end``) before the
    logged row (``on_log``)."""
    evaluations = [(row["step"], 0, {"step": row["step"], **{f"eval/{k}": v for k, v in row.items() if k != "step"}})
                   for row in trajectory]
    logged = [(row["step"], 1, row) for row in log_history if "step" in row]
    return [row for _, _, row in sorted(evaluations + logged, key=lambda item: item[:2])]  # stable within a (step, kind)


class ResumableEvaluation(TrainerCallback, ExportableState):
    """A :class:`adrpo.llm.callbacks.HeldOutEvaluation` whose trajectory is kept in every checkpoint and restored on
    resume. ``monitor`` (the run's :class:`adrpo.llm.callbacks.CollapseMonitorCallback`, placed before this callback,
    or None) is reset with the restored rows after its own reset from the logged rows."""

    def __init__(self, evaluation: Any, monitor: Any | None = None):
        self.evaluation = evaluation
        self.monitor = monitor

    @property
    def trajectory(self) -> list[dict[str, float]]:
        return self.evaluation.trajectory

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"trajectory": self.evaluation.trajectory}}

    def restore(self, state: TrainerState) -> None:
        """Put the evaluations saved in a checkpoint's ``state`` back, and reset the monitor with them and the
        state's logged rows."""
        saved = state.stateful_callbacks.get(type(self).__name__)
        if saved is None:
            raise RuntimeError(f"a checkpoint at step {state.global_step} without the held-out evaluations ({type(self).__name__} "
                               f"in its {TRAINER_STATE}): remove the run's checkpoints to train it afresh")
        self.evaluation.trajectory[:] = saved["attributes"]["trajectory"]
        if self.monitor is not None:
            self.monitor.monitor.reset(monitor_rows(self.evaluation.trajectory, state.log_history))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a fresh start: the base model's evaluation
            return self.evaluation.on_train_begin(args, state, control, **kwargs)
        self.restore(state)  # after the monitor's own reset (it comes first), which set where its alarms are written
        return None

    def on_step_end(self, args, state, control, **kwargs):
        return self.evaluation.on_step_end(args, state, control, **kwargs)
