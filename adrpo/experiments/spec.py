"""The one experiment spec: (configuration × seed) jobs on a flow task or an LLM task.

A spec is a YAML mapping (see ``adrpo/configs/digits-quick.yaml``, ``arithmetic-quick.yaml``,
``digits-sweep.yaml``)::

    task: digits                          # digits, text_to_image (flow), arithmetic or audio_qa (LLM)
    task_args: {eval_samples: 32}
    trainer: {num_steps: 300, ...}        # shared trainer fields: FlowConfig, or ADRPOConfig/GRPOConfig
    eval: {steps: 50}                     # flow: {steps}; LLM: {steps, group, prompts}
    seeds: [0, 1, 2]
    workers: 2                            # runs in parallel processes, one thread each
    output_dir: runs/digits-quick
    monitor: warn                         # the collapse monitor's policy (LLM runs; flow runs read trainer.monitor)
    methods:
      - {label: ADRPO-FM, method: adrpo}                                   # one configuration
      - {label: ORW-CFM-W2, method: orw_cfm_w2, grid: {orw_alpha: [0.1, 1, 10]}}   # a sweep: one per value
      - {label: ADRPO, method: adrpo, points: [{beta0: 0.3}, {beta0: 1.0, adv_clip_max: 2.0}]}

A method with ``grid`` expands into the Cartesian product of its lists, one with ``points``
into its listed overrides; each expanded configuration is labelled ``"<label> (key=value, ...)"``
and belongs to the *family* ``<label>`` (or ``family:`` when given). Its *role* in the Pareto
analysis is ``adaptive`` (ADRPO), ``baseline`` (a fixed-coefficient method: ORW-CFM-W2, GRPO)
or ``other`` (RAFT, Flow-DPO), from the method unless ``role:`` says otherwise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from adrpo.errors import ConfigError
from adrpo.settings import from_mapping, monitor_policy

TASK_KINDS = {"digits": "flow", "text_to_image": "flow", "arithmetic": "llm", "audio_qa": "llm"}
ROLES = ("adaptive", "baseline", "other")
EXPANSION_KEYS = ("label", "family", "role", "grid", "points")
# Flow methods by ``method``, LLM methods by ``trainer``.
DEFAULT_ROLES = {"adrpo": "adaptive", "orw_cfm_w2": "baseline", "grpo": "baseline"}


@dataclass(frozen=True)
class Configuration:
    """One expanded method: its label, family, Pareto role and trainer overrides."""

    label: str
    family: str
    role: str
    overrides: dict[str, Any]


@dataclass
class ExperimentSpec:
    """A (configuration × seed) experiment; see the module docstring for the YAML layout."""

    methods: list[dict[str, Any]]
    task: str = "digits"
    task_args: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    workers: int = 1
    output_dir: str = "runs/experiment"
    monitor: Any = "warn"

    def __post_init__(self) -> None:
        if self.task not in TASK_KINDS:
            raise ConfigError(f"task must be one of {sorted(TASK_KINDS)}, got {self.task!r}")
        for name, kind in (("task_args", dict), ("trainer", dict), ("eval", dict), ("methods", list), ("seeds", list)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not self.methods:
            raise ConfigError("methods is empty")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of ints, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds repeat: {self.seeds}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be an int >= 1, got {self.workers!r}")
        self.monitor = normalised_monitor(self.monitor)
        if self.kind == "flow" and self.monitor != "warn":  # FlowTrainer reads its own field; this one would do nothing
            raise ConfigError(f"monitor: {self.monitor!r} applies to LLM runs; a flow run's monitor is trainer.monitor "
                              "(trainer: {monitor: ...})")
        labels = [c.label for c in self.configurations()]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(f"methods: duplicate labels {repeated}")

    @property
    def kind(self) -> str:
        """"flow" or "llm", from the task."""
        return TASK_KINDS[self.task]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentSpec:
        return from_mapping(cls, values, "experiment")

    def configurations(self) -> list[Configuration]:
        """Every method expanded (grids and point lists), in spec order."""
        return [c for i, method in enumerate(self.methods) for c in expand_method(method, where=f"methods[{i}]")]


def normalised_monitor(value: Any) -> Any:
    """The spec's ``monitor`` in one spelling per meaning, so that equal settings hash alike: a policy
    name (YAML booleans read as :func:`adrpo.settings.monitor_policy` does: false = "off", true = "warn"),
    or ``{policy, thresholds}`` when thresholds are given (a mapping without any is its policy)."""
    if not isinstance(value, dict):
        return monitor_policy(value)
    unknown = sorted(set(value) - {"policy", "thresholds"})
    if unknown:
        raise ConfigError(f"unknown monitor key(s) {unknown}; known: ['policy', 'thresholds']")
    policy = monitor_policy(value.get("policy", "warn"), field="monitor.policy")
    thresholds = value.get("thresholds") or {}
    if not isinstance(thresholds, dict):
        raise ConfigError(f"monitor.thresholds must be a mapping, got {thresholds!r}")
    return {"policy": policy, "thresholds": thresholds} if thresholds else policy


def expand_method(method: dict[str, Any], *, where: str) -> list[Configuration]:
    """One method entry -> its configurations (one, or one per grid combination / listed point)."""
    if not isinstance(method, dict) or not isinstance(method.get("label"), str) or not method["label"]:
        raise ConfigError(f"{where} must be a mapping with a non-empty 'label', got {method!r}")
    label = method["label"]
    shared = {k: v for k, v in method.items() if k not in EXPANSION_KEYS}
    grid, points = method.get("grid"), method.get("points")
    if grid is not None and points is not None:
        raise ConfigError(f"{where} ({label!r}): give 'grid' or 'points', not both")
    if grid is not None:
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"{where} ({label!r}): grid must map keys to non-empty lists, got {grid!r}")
        variants = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    elif points is not None:
        if not isinstance(points, list) or not points or not all(isinstance(p, dict) and p for p in points):
            raise ConfigError(f"{where} ({label!r}): points must be a non-empty list of non-empty mappings, got {points!r}")
        variants = list(points)
    else:
        variants = [{}]
    role = method.get("role") or DEFAULT_ROLES.get(shared.get("method", shared.get("trainer")), "other")
    if role not in ROLES:
        raise ConfigError(f"{where} ({label!r}): role must be one of {ROLES}, got {role!r}")
    family = method.get("family", label)
    return [
        Configuration(point_label(label, variant), family, role, {**shared, **variant})
        for variant in variants
    ]


def point_label(label: str, variant: dict[str, Any]) -> str:
    """``"ADRPO (beta0=0.3, adv_clip_max=2)"``; the bare label for an unexpanded method."""
    if not variant:
        return label
    return f"{label} (" + ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in variant.items()) + ")"
