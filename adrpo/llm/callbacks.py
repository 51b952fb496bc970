"""TRL/transformers callbacks: the training-collapse monitor of :mod:`adrpo.core.monitor`, and a held-out
evaluation every N steps (:class:`HeldOutEvaluation`).

:class:`CollapseMonitorCallback` feeds every ``on_log`` dict (TRL's GRPOTrainer hands it
``reward``, ``kl``, ``entropy``, ``frac_reward_zero_std``, ``adrpo/frac_negative``, ``kl_base`` (GRPO or ADRPO
with ``sync_ref_model``, :mod:`adrpo.llm.base_kl`), ... for
training and the same keys with an ``eval_`` prefix for evaluation) with
``step = state.global_step`` to the detector. Policy ``warn`` logs each alarm; ``stop`` sets
``control.should_save`` and ``control.should_training_stop``, so that the Trainer writes
``checkpoint-<step>`` and ends the run; ``resume_from_checkpoint`` continues it. Alarms are
appended to ``output_dir/alarms.jsonl``.

GRPOTrainer gathers its metrics across processes before logging, so every process sees the
same rows and takes the same stop decision; only world process zero warns and writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from adrpo.core.monitor import POLICIES, Alarm, CollapseMonitor, Thresholds
from adrpo.errors import ConfigError
from adrpo.settings import monitor_policy


class CollapseMonitorCallback(TrainerCallback):
    """The collapse monitor as a ``TrainerCallback``.

    Args:
        thresholds: the detector's :class:`~adrpo.core.monitor.Thresholds` (defaults when None).
        policy: "warn" or "stop".
        path: where alarms are recorded; default ``args.output_dir/alarms.jsonl``.
    """

    def __init__(self, thresholds: Thresholds | None = None, *, policy: str = "warn", path: str | Path | None = None):
        self.monitor = CollapseMonitor(thresholds, policy=policy)
        self.path = None if path is None else Path(path)

    @property
    def alarms(self) -> list[Alarm]:
        return self.monitor.alarms

    def observe(self, row: Mapping[str, Any], control) -> list[Alarm]:
        """Feed one row (with a ``step``) from any source, e.g. a held-out evaluation callback;
        under ``stop`` a new alarm sets ``control`` to save and end training."""
        new = self.monitor.observe(row)
        if new and self.monitor.policy == "stop":
            control.should_save = True
            control.should_training_stop = True
        return new

    def on_train_begin(self, args, state, control, **kwargs):
        """Start over, replaying ``state.log_history`` (a resumed run's) so fired rules stay fired."""
        main = state.is_world_process_zero
        self.monitor.announce = main
        self.monitor.path = (self.path or Path(args.output_dir) / "alarms.jsonl") if main else None
        self.monitor.reset(state.log_history)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.observe({**(logs or {}), "step": state.global_step}, control)


def monitor_callback(setting: Any = "warn") -> CollapseMonitorCallback | None:
    """The callback a recipe's ``monitor:`` value asks for; None for "off".

    ``setting`` is a policy ("off", "warn", "stop"), a YAML boolean (``monitor: off`` reads as
    False: "off"; True: "warn"; :func:`adrpo.settings.monitor_policy`) or a mapping
    ``{policy: stop, thresholds: {kl_max: 1.0, ...}}`` (policy default "warn").
    """
    if isinstance(setting, (str, bool)):
        setting = {"policy": setting}
    if not isinstance(setting, Mapping):
        raise ConfigError(f"monitor must be one of {POLICIES}, a YAML boolean or a mapping {{policy, thresholds}}, got {setting!r}")
    unknown = sorted(set(setting) - {"policy", "thresholds"})
    if unknown:
        raise ConfigError(f"unknown monitor key(s) {unknown}; known: ['policy', 'thresholds']")
    policy = monitor_policy(setting.get("policy", "warn"), field="monitor policy")
    try:
        thresholds = Thresholds.from_dict(setting.get("thresholds") or {})
    except ConfigError as err:
        raise ConfigError(f"monitor.thresholds: {err}") from err
    return None if policy == "off" else CollapseMonitorCallback(thresholds, policy=policy)


class HeldOutEvaluation(TrainerCallback):
    """``evaluate(model) -> metrics`` at step 0, every ``steps`` steps and at the end; the results, each with its
    ``step``, in :attr:`trajectory`. Each evaluation is also fed to ``monitor`` (a :class:`CollapseMonitorCallback`)
    with ``eval/`` keys."""

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], *, steps: int, monitor: CollapseMonitorCallback | None = None):
        self.evaluate = evaluate
        self.steps = steps
        self.monitor = monitor
        self.trajectory: list[dict[str, float]] = []

    def _evaluate(self, state, control, model) -> None:
        metrics = self.evaluate(model)
        self.trajectory.append({"step": state.global_step, **metrics})
        if self.monitor is not None:
            self.monitor.observe({"step": state.global_step, **{f"eval/{k}": v for k, v in metrics.items()}}, control)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._evaluate(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.steps == 0 or state.global_step == state.max_steps:
            self._evaluate(state, control, model)


def policy_evaluation(evaluate_policy: Callable[..., dict[str, float]], reference, processing, rows: list, *, steps: int, group: int,
                      max_new_tokens: int, seed: int, monitor: CollapseMonitorCallback | None = None) -> HeldOutEvaluation:
    """A :class:`HeldOutEvaluation` of a task's ``evaluate_policy(model, reference, processing, rows, *, group,
    max_new_tokens, seed)``, the reference moved to the policy's device at each evaluation. ``reference`` is the
    caller's model, not TRL's ``ref_model``: the tasks pass the base model from its folder, which ``sync_ref_model``
    never moves, so the held-out ``kl`` is the drift from the base (the training rows' ``kl_base``, see :mod:`adrpo.llm.base_kl`)."""

    def evaluate(model) -> dict[str, float]:
        return evaluate_policy(model, reference.to(model.device), processing, rows, group=group, max_new_tokens=max_new_tokens, seed=seed)

    return HeldOutEvaluation(evaluate, steps=steps, monitor=monitor)
