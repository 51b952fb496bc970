"""GRPO (fixed β) vs ADRPO-GRPO on the arithmetic miniature: methods × seeds, same generations.

A comparison YAML (see ``adrpo/configs/arithmetic-quick.yaml``)::

    task_args: {max_operand: 30}
    trainer: {max_steps: 60, learning_rate: 5.0e-4, ...}     # ADRPOConfig / GRPOConfig fields
    eval: {steps: 10, group: 8, prompts: 50}
    seeds: [0, 1, 2]
    monitor: warn                                             # collapse monitor, as in the grpo recipe
    methods:
      - {label: "GRPO β=0", trainer: grpo, beta: 0.0}
      - {label: ADRPO, trainer: adrpo, beta: 0.04}

``trainer: grpo`` is stock TRL GRPOTrainer; ``trainer: adrpo`` is ADRPOTrainer. Every run
writes TRL's output under ``output_dir/runs/<label>/seed-<s>``. The collapse monitor
(:mod:`adrpo.llm.callbacks`) reads TRL's logs and the held-out evaluations (as ``eval/``
keys; its distinct-completions share is the ``eval/diversity`` the diversity rule reads);
each run's result carries its ``alarms`` (None with ``monitor: off``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from adrpo.errors import ConfigError
from adrpo.experiments.compare import run_dir
from adrpo.settings import from_mapping

CPU_DEFAULTS = {"bf16": False, "gradient_checkpointing": False, "use_cpu": True}


@dataclass
class LLMCompareSpec:
    methods: list[dict[str, Any]]
    task_args: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=lambda: {"steps": 10, "group": 8, "prompts": 50})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = "runs/arithmetic"
    monitor: Any = "warn"

    def __post_init__(self) -> None:
        from adrpo.llm.callbacks import monitor_callback

        monitor_callback(self.monitor)  # validates the setting now
        labels = [m.get("label") for m in self.methods]
        if not self.methods or None in labels or len(set(labels)) != len(labels):
            raise ConfigError("methods must be a non-empty list with a unique 'label' each")
        for method in self.methods:
            if method.get("trainer") not in ("grpo", "adrpo"):
                raise ConfigError(f"method {method['label']!r}: trainer must be 'grpo' or 'adrpo', got {method.get('trainer')!r}")
            try:
                self.run_args(method, seed=self.seeds[0])  # validates every method now, not mid-comparison
            except (TypeError, ValueError) as err:
                raise ConfigError(f"method {method['label']!r}: {err}") from err

    def run_args(self, method: dict[str, Any], *, seed: int):
        """The GRPOConfig (``trainer: grpo``) or ADRPOConfig of one (method, seed) run."""
        from trl import GRPOConfig

        from adrpo.llm.config import ADRPOConfig

        overrides = {k: v for k, v in method.items() if k not in ("label", "trainer")}
        values = {**CPU_DEFAULTS, "report_to": "none", "save_strategy": "no", "logging_steps": 1,
                  **self.trainer, **overrides, "seed": seed, "output_dir": str(self.run_dir(method["label"], seed))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return (ADRPOConfig if method["trainer"] == "adrpo" else GRPOConfig)(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> LLMCompareSpec:
        with open(path) as handle:
            return cls.from_dict(yaml.safe_load(handle) or {})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LLMCompareSpec:
        return from_mapping(cls, values, "comparison")

    def run_dir(self, label: str, seed: int) -> Path:
        return run_dir(self.output_dir, label, seed)


def make_evaluation_callback(reference_path: Path, rows: list[dict], *, steps: int, group: int, max_new_tokens: int, seed: int,
                             monitor=None):
    """A TrainerCallback that evaluates the policy at step 0, every ``steps`` and at the end;
    each evaluation is also fed to ``monitor`` (a CollapseMonitorCallback) with ``eval/`` keys."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from adrpo.tasks.arithmetic import evaluate_policy

    reference = AutoModelForCausalLM.from_pretrained(reference_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(reference_path)

    class HeldOutEvaluation(TrainerCallback):
        def __init__(self):
            self.trajectory: list[dict[str, float]] = []

        def _evaluate(self, state, control, model):
            metrics = evaluate_policy(model, reference.to(model.device), tokenizer, rows, group=group, max_new_tokens=max_new_tokens, seed=seed)
            self.trajectory.append({"step": state.global_step, **metrics})
            if monitor is not None:
                monitor.observe({"step": state.global_step, **{f"eval/{k}": v for k, v in metrics.items()}}, control)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._evaluate(state, control, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % steps == 0 or state.global_step == state.max_steps:
                self._evaluate(state, control, model)

    return HeldOutEvaluation()


def run_one(spec: LLMCompareSpec, method: dict[str, Any], seed: int) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from adrpo.llm.callbacks import monitor_callback
    from adrpo.llm.trainer import ADRPOTrainer
    from adrpo.rewards.text import checked, math_answer_reward
    from adrpo.tasks.arithmetic import ArithmeticSettings, base_model_path, split_prompts

    settings = ArithmeticSettings(**spec.task_args)
    path = base_model_path(settings)
    train_rows, held_out = split_prompts(settings)
    args = spec.run_args(method, seed=seed)
    trainer_cls = ADRPOTrainer if method["trainer"] == "adrpo" else GRPOTrainer
    monitor = monitor_callback(spec.monitor)
    callback = make_evaluation_callback(
        path, held_out[: spec.eval.get("prompts", 50)], steps=spec.eval.get("steps", 10), group=spec.eval.get("group", 8),
        max_new_tokens=args.max_completion_length, seed=1000 + seed, monitor=monitor,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = trainer_cls(model=str(path), reward_funcs=checked(math_answer_reward), args=args,
                              train_dataset=Dataset.from_list(train_rows),
                              callbacks=[monitor, callback] if monitor else [callback])  # the monitor resets first
        trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; TRL's logs stay in log_history
        trainer.train()
    logged = [row for row in trainer.state.log_history if "reward" in row]
    return {"label": method["label"], "seed": seed, "trajectory": callback.trajectory,
            "train_log": [{k: row.get(k) for k in ("step", "reward", "kl", "entropy", "adrpo/coef_mean", "adrpo/frac_clipped")} for row in logged],
            "alarms": None if monitor is None else [alarm.to_dict() for alarm in monitor.alarms]}


def run_llm_compare(spec: LLMCompareSpec) -> dict[str, Any]:
    jobs = [(method, seed) for seed in spec.seeds for method in spec.methods]
    runs = [run_one(spec, method, seed) for method, seed in tqdm(jobs, desc="runs", dynamic_ncols=True)]
    return {"spec": dataclasses.asdict(spec), "runs": runs}
