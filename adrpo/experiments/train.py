"""The typed spec of one ``adrpo fm train`` run (see ``adrpo/configs/digits-train.yaml``)::

    task: digits                       # or text_to_image
    task_args: {eval_samples: 32}      # the task's own arguments
    eval_steps: 50                     # evaluate every this many steps (0: before and after only)
    trainer: {method: adrpo, ...}      # FlowConfig fields

Unknown keys and values of the wrong type are refused by name (:class:`adrpo.errors.ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adrpo.errors import ConfigError
from adrpo.flow.config import FlowConfig
from adrpo.settings import from_mapping


@dataclass
class TrainSpec:
    """One flow fine-tuning run: the task, its arguments, the evaluation cadence and the trainer."""

    task: str = "digits"
    task_args: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    eval_steps: int = 0
    config: FlowConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, kind in (("task", str), ("task_args", dict), ("trainer", dict), ("eval_steps", int)):
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"train config: {name} must be a {kind.__name__}, got {value!r}")
        if self.eval_steps < 0:
            raise ConfigError(f"train config: eval_steps must be >= 0, got {self.eval_steps}")
        self.config = FlowConfig.from_dict(self.trainer)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSpec:
        return from_mapping(cls, values, "train config")
