"""A training-collapse monitor: a detector over the stream of logged metric rows.

A row is one logged dict with a ``step`` (a flow run's ``metrics.jsonl`` line, a TRL
``on_log`` dict plus ``state.global_step``). The first value a run logs for a key is that
key's *base*: a flow run's evaluation at step 0 is the base model's; its first training row
is the untrained policy's samples when it logs every step (``logging_steps: 1``), and TRL's
first row averages its first ``logging_steps`` steps. Six rules, each reading the keys listed in
:data:`RULES` and firing at most once per run, at its first occurrence:

=========================  ==================================================================
``diversity_collapse``     diversity (flow: embedding spread per prompt; LLM held-out
                           evaluation: distinct completions) < ``diversity_fraction`` × base
                           while the reward of the same row is above its base
``entropy_collapse``       per-token entropy (TRL) < ``entropy_fraction`` × base while the
                           reward is above its base
``w2_bound``               the W2 proxy mean ‖v_θ − v_ref‖² per dimension > ``w2_max``; to
                           the base model (``w2_base``) where the row has it
``kl_bound``               per-token KL(π_θ‖π_ref) > ``kl_max`` (the training batch's: in
                           ``kl_rows`` consecutive rows; a held-out evaluation's: in one); to
                           the base model (``kl_base``) where the row has it
``zero_std_saturation``    share of prompt groups whose rewards are all equal (no signal)
                           > ``zero_std_max`` in ``saturation_rows`` consecutive rows
``negative_saturation``    share of negative ADRPO coefficients β0 − A (samples pushed away
                           from the reference) > ``negative_max`` in ``saturation_rows`` rows
=========================  ==================================================================

A rule whose keys a row lacks (or holds as None/NaN) does not look at that row: missing
metrics switch rules off, so one detector serves flow and TRL runs.

The drift bounds measure the divergence from the base model. Under a moving reference
(``sync_ref_model``) ``w2`` and ``kl`` are to the current reference, which follows the policy, so
they can stay small while the policy walks arbitrarily far from the base (moving-reference ADRPO-FM
runs reached a W2 of 11–12 to the base, over 20 × ``w2_max``, without an alarm); such runs also log
``w2_base`` / ``kl_base`` (evaluations ``eval/w2_base``, ``eval_kl_base``), and the bounds read
those where a row has them, the plain key otherwise (under a fixed reference they are the same). Key names: flow training rows are
unprefixed (``reward_mean``, ``diversity``, ``w2``, ``frac_negative``) and its evaluator's
carry ``eval/``; TRL 1.16's ``GRPOTrainer.log`` hands callbacks unprefixed training keys
(``reward``, ``kl``, ``entropy``, ``frac_reward_zero_std``, ``adrpo/frac_negative``) and
``eval_``-prefixed evaluation keys.

Only the standard library here: the trainers wire :class:`CollapseMonitor` in
(``FlowTrainer`` builds one from its config; ``adrpo.llm.callbacks`` wraps one for TRL).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adrpo.errors import ConfigError

logger = logging.getLogger("adrpo.monitor")

POLICIES = ("off", "warn", "stop")


@dataclass(frozen=True)
class Thresholds:
    """The monitor's thresholds; ``None`` switches a rule off.

    Defaults, and why (digits and arithmetic numbers from the results pages, docs/results-*.md):

    - ``diversity_fraction = 0.5``: half the base model's diversity. Healthy runs stay far
      above it (ADRPO-FM ends at 0.93 × base, ORW-CFM-W2 α = 1 at 0.85 ×, every arithmetic
      GRPO/ADRPO run at ≥ 0.77 × base distinct completions after 400 steps); the runs the
      results pages call collapsed end at 0.33–0.60 × base. The per-step training value is noisy
      (one batch): on tests/test_monitor_runs.py's tiny digits setting ADRPO-FM dips to
      0.66 × base at worst over 1000 steps, so 0.5 leaves room for that noise too.
    - ``entropy_fraction = 0.5``: half the base per-token entropy; healthy arithmetic runs
      end at 0.75 × base.
    - ``w2_max = 0.5``: per data dimension. For unit-variance data and noise the straight-path
      target u = x1 − x0 has a per-dimension second moment of about 2, so 0.5 is a velocity
      field off the reference by half its own RMS size: another model, not a fine-tune.
      Healthy digits runs end at 0.04–0.05; Flow-DPO reaches 1.0 and RAFT 6–9 (on the tiny
      test setting ADRPO-FM peaks at 0.025 and RAFT passes 0.5 after 46–71 steps).
    - ``kl_max = 0.5``: nats per token. Healthy arithmetic runs end at 0.05–0.14 after 400
      steps; 0.5 per token is a policy whose every next-token distribution has moved far.
    - ``kl_rows = 3``: the KL bound on TRL's training KL, one batch's estimate, needs that many
      consecutive logged rows above ``kl_max``; a held-out evaluation's KL (many prompts) fires on
      one. Single training batches of 4 prompts cross 0.5 in runs of the audio QA miniature whose
      held-out KL ends at 0.02–0.04 (the β = 0.04 runs at step 6 and 12 of seed 1, 0.72 and
      1.36–1.44, each below the bound again the next step); where the training KL stays above it
      for three rows (seed 0: steps 7–10, 1.36–1.51 at step 9) the alarm still fires. The W2 bound
      needs no such patience: a flow step's W2 averages every sample's every dimension (healthy
      digits runs end at 0.04–0.05, a tenth of ``w2_max``).
    - ``zero_std_max = 0.9``: nine groups in ten give the same reward to every completion, so
      the update is nearly signal-free (all solved, collapsed, or all failed).
    - ``negative_max = 0.25``: a quarter of the samples pushed away from the reference. With
      the paper's clip ±β0 the share is exactly 0; it is non-zero only when A_max > β0.
    - ``saturation_rows = 3``: the saturation rules need that many consecutive logged rows, so a
      single noisy batch does not fire them.
    """

    diversity_fraction: float | None = 0.5
    entropy_fraction: float | None = 0.5
    w2_max: float | None = 0.5
    kl_max: float | None = 0.5
    zero_std_max: float | None = 0.9
    negative_max: float | None = 0.25
    saturation_rows: int = 3
    kl_rows: int = 3

    def __post_init__(self) -> None:
        for name in ("diversity_fraction", "entropy_fraction", "zero_std_max", "negative_max"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0 < value <= 1):
                raise ConfigError(f"{name} must be in (0, 1] or None, got {value!r}")
        for name in ("w2_max", "kl_max"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not value > 0):
                raise ConfigError(f"{name} must be > 0 or None, got {value!r}")
        for name in ROW_COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Thresholds:
        """Defaults overridden by ``values`` (e.g. parsed YAML); unknown names are refused.

        Numbers YAML leaves as text (``1e-3``) are converted; ``None`` switches a rule off.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"monitor thresholds must be a mapping, got {values!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown monitor threshold(s) {unknown}; known: {known}")
        converted = {}
        for name, value in values.items():
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{name} must be a number or None, got {value!r}") from None
            if name in ROW_COUNTS and isinstance(value, float) and value.is_integer():
                value = int(value)
            converted[name] = value
        return cls(**converted)


ROW_COUNTS = ("saturation_rows", "kl_rows")  # the Thresholds fields that count consecutive rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Alarm:
    """One rule's first firing: what, where, the observed value and the threshold it crossed.

    ``threshold`` is the value actually compared against (for the collapse rules,
    fraction × base, the base being in ``message``).
    """

    rule: str
    metric: str
    step: int
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Alarm:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


# ------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Collapse:
    """``metric < fraction × base(metric)`` while ``reward > base(reward)`` in the same row.

    ``pairs``: (reward key, metric key) of each stream the rule reads.
    """

    name: str
    pairs: tuple[tuple[str, str], ...]
    threshold: str

    def check(self, row: Mapping[str, float], step: int, memory: Memory, limits: Thresholds) -> Alarm | None:
        fraction = getattr(limits, self.threshold)
        for reward_key, key in self.pairs:
            if fraction is None or key not in row or reward_key not in row:
                continue
            value, base = row[key], memory.bases[key]
            reward, reward_base = row[reward_key], memory.bases[reward_key]
            bound = fraction * base
            if base > 0 and value < bound and reward > reward_base:
                return Alarm(self.name, key, step, value, bound, (
                    f"{self.name} at step {step}: {key} = {value:.4g} < {fraction:g} × base {base:.4g} = {bound:.4g} "
                    f"while {reward_key} = {reward:.4g} > base {reward_base:.4g}"))
        return None


@dataclass(frozen=True)
class Bound:
    """``metric > bound``, in ``rows`` consecutive rows that carry the metric when ``rows`` names a
    row count of :class:`Thresholds` (else in one row). With ``patient`` the row count applies to
    those keys only, and every other key fires on one row.

    ``threshold`` names the bound in :class:`Thresholds`. ``instead`` maps a key to the key read in
    its place when a row has that one (``w2`` → ``w2_base``); ``patient`` names the plain keys.
    """

    name: str
    keys: tuple[str, ...]
    threshold: str
    rows: str | None = None
    patient: tuple[str, ...] | None = None
    instead: tuple[tuple[str, str], ...] = ()

    def check(self, row: Mapping[str, float], step: int, memory: Memory, limits: Thresholds) -> Alarm | None:
        bound = getattr(limits, self.threshold)
        preferred = dict(self.instead)
        for plain in self.keys:
            key = preferred[plain] if preferred.get(plain) in row else plain
            if bound is None or key not in row:
                continue
            counted = self.rows is not None and (self.patient is None or plain in self.patient)
            needed = getattr(limits, self.rows) if counted else 1
            memory.streaks[key] = memory.streaks.get(key, 0) + 1 if row[key] > bound else 0
            if memory.streaks[key] >= needed:
                rows = f" in {memory.streaks[key]} consecutive logged rows" if counted else ""
                return Alarm(self.name, key, step, row[key], bound,
                             f"{self.name} at step {step}: {key} = {row[key]:.4g} > {self.threshold} = {bound:.4g}{rows}")
        return None


Rule = Collapse | Bound

RULES: tuple[Rule, ...] = (
    Collapse("diversity_collapse", (("reward_mean", "diversity"), ("eval/reward", "eval/diversity")), "diversity_fraction"),
    Collapse("entropy_collapse", (("reward", "entropy"), ("eval_reward", "eval_entropy"), ("eval/reward", "eval/entropy")),
             "entropy_fraction"),
    # under a moving reference the divergence to the base, not to the reference, is bounded
    Bound("w2_bound", ("w2", "eval/w2"), "w2_max", instead=(("w2", "w2_base"), ("eval/w2", "eval/w2_base"))),
    # one training batch's KL is noisy; a held-out evaluation's averages many prompts and fires on one row
    Bound("kl_bound", ("kl", "eval_kl", "eval/kl"), "kl_max", rows="kl_rows", patient=("kl",),
          instead=(("kl", "kl_base"), ("eval_kl", "eval_kl_base"), ("eval/kl", "eval/kl_base"))),
    Bound("zero_std_saturation", ("frac_reward_zero_std", "eval_frac_reward_zero_std"), "zero_std_max", rows="saturation_rows"),
    Bound("negative_saturation", ("frac_negative", "adrpo/frac_negative", "eval_adrpo/frac_negative"), "negative_max",
          rows="saturation_rows"),
)


@dataclass
class Memory:
    """What the detector remembers of a run: each key's base, its streak of rows above a bound, fired rules."""

    bases: dict[str, float] = dataclasses.field(default_factory=dict)
    streaks: dict[str, int] = dataclasses.field(default_factory=dict)
    fired: set[str] = dataclasses.field(default_factory=set)


def numeric_row(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (None, NaN, text and bools dropped: those metrics are missing)."""
    return {k: float(v) for k, v in row.items() if _is_number(v) and math.isfinite(v)}


class CollapseDetector:
    """Incremental: feed rows in step order with :meth:`update`, get the alarms they raise.

    >>> detector = CollapseDetector()
    >>> detector.update({"step": 0, "eval/reward": 0.6, "eval/diversity": 4.0})
    []
    >>> [a.rule for a in detector.update({"step": 50, "eval/reward": 0.8, "eval/diversity": 1.5})]
    ['diversity_collapse']
    """

    def __init__(self, thresholds: Thresholds | None = None, rules: Iterable[Rule] = RULES):
        self.thresholds = thresholds or Thresholds()
        self.rules = tuple(rules)
        self.memory = Memory()
        self.alarms: list[Alarm] = []

    def update(self, row: Mapping[str, Any]) -> list[Alarm]:
        """The alarms first raised by this row (each rule fires once per run)."""
        if "step" not in row:
            raise ValueError(f"a metric row needs a 'step', got keys {sorted(row)}")
        step = int(row["step"])
        values = numeric_row({k: v for k, v in row.items() if k != "step"})
        for key, value in values.items():
            self.memory.bases.setdefault(key, value)
        new = []
        for rule in self.rules:
            if rule.name in self.memory.fired:
                continue
            alarm = rule.check(values, step, self.memory, self.thresholds)
            if alarm is not None:
                self.memory.fired.add(rule.name)
                new.append(alarm)
        self.alarms.extend(new)
        return new


def detect(rows: Iterable[Mapping[str, Any]], thresholds: Thresholds | None = None) -> list[Alarm]:
    """Every alarm a whole stream of rows raises (e.g. a finished run's ``metrics.jsonl``)."""
    detector = CollapseDetector(thresholds)
    for row in rows:
        detector.update(row)
    return detector.alarms


def read_alarms(path: str | Path) -> list[Alarm]:
    """The alarms recorded in an ``alarms.jsonl`` ([] when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [Alarm.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line]


# ------------------------------------------------------------------------------------ policy
class CollapseMonitor:
    """The detector plus what to do about an alarm.

    Every alarm is logged as a warning on the ``adrpo.monitor`` logger (``announce``) and
    appended to ``path`` (an ``alarms.jsonl``, when given). Under policy ``stop``,
    :attr:`stop_requested` turns true at the first alarm.

    It is also a ``FlowTrainer`` callback: ``on_train_begin`` replays the rows a resumed run
    kept (silently, so a rule that fired before the restart stays fired) and ``on_log``
    observes each row, setting ``trainer.should_stop`` under ``stop``.
    """

    def __init__(self, thresholds: Thresholds | None = None, *, policy: str = "warn", path: str | Path | None = None,
                 announce: bool = True):
        if policy not in ("warn", "stop"):
            raise ConfigError(f"monitor policy must be 'warn' or 'stop' ('off' builds no monitor), got {policy!r}")
        self.thresholds = thresholds or Thresholds()
        self.policy = policy
        self.path = None if path is None else Path(path)
        self.announce = announce
        self.detector = CollapseDetector(self.thresholds)
        self.stop_requested = False

    @property
    def alarms(self) -> list[Alarm]:
        return self.detector.alarms

    def reset(self, history: Iterable[Mapping[str, Any]] = ()) -> None:
        """Start over, then replay ``history`` (rows logged before a resume) without warnings;
        ``path`` is rewritten to hold exactly the replayed rows' alarms (removed when there are
        none: a run without alarms leaves no file)."""
        self.detector = CollapseDetector(self.thresholds)
        self.stop_requested = False
        for row in history:
            if "step" in row:
                self.detector.update(row)
        if self.path is not None and self.alarms:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(a.to_dict()) + "\n" for a in self.alarms))
        elif self.path is not None:
            self.path.unlink(missing_ok=True)

    def observe(self, row: Mapping[str, Any]) -> list[Alarm]:
        """Feed one row; warn about and record its new alarms; returns them."""
        new = self.detector.update(row)
        for alarm in new:
            if self.announce:
                action = "stopping the run (policy stop)" if self.policy == "stop" else "training continues (policy warn)"
                logger.warning("collapse monitor: %s; %s", alarm.message, action)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as handle:
                    handle.write(json.dumps(alarm.to_dict()) + "\n")
        if new and self.policy == "stop":
            self.stop_requested = True
        return new

    def on_train_begin(self, trainer: Any, rows: list[dict[str, float]]) -> None:
        self.reset(rows)

    def on_log(self, trainer: Any, row: dict[str, float]) -> None:
        self.observe(row)
        if self.stop_requested:
            trainer.should_stop = True
