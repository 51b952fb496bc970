"""Run methods × seeds on a task through the public FlowTrainer API and collect evaluations.

A comparison is described by a YAML file (see ``adrpo/configs/digits*.yaml``)::

    task: digits
    task_args: {eval_samples: 32}
    trainer: {num_steps: 300, learning_rate: 1e-3, ...}    # FlowConfig fields shared by all
    eval_steps: 50
    seeds: [0, 1, 2]
    methods:
      - {label: ADRPO, method: adrpo}
      - {label: "ORW-CFM-W2 (α=1)", method: orw_cfm_w2, orw_alpha: 1.0}

Each (method, seed) run writes ``output_dir/runs/<label>/seed-<s>/`` (metrics.jsonl,
alarms.jsonl of the collapse monitor, TensorBoard logs, final checkpoint); a run's result
carries its ``alarms``. The base model's row is every run's evaluation before
its first step.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from adrpo.errors import ConfigError
from adrpo.flow.config import FlowConfig
from adrpo.settings import from_mapping

BASE_LABEL = "Base"


def run_dir(output_dir: str, label: str, seed: int) -> Path:
    """``output_dir/runs/<label as a file name>/seed-<seed>``."""
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", label).strip("_")
    return Path(output_dir) / "runs" / slug / f"seed-{seed}"


@dataclass
class CompareSpec:
    """A comparison: shared trainer settings, the methods (each a label plus overrides), seeds."""

    methods: list[dict[str, Any]]
    task: str = "digits"
    task_args: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_steps: int = 50
    output_dir: str = "runs/compare"
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods is empty")
        labels = []
        for i, method in enumerate(self.methods):
            if "label" not in method:
                raise ConfigError(f"methods[{i}] has no 'label'")
            labels.append(method["label"])
            self.run_config(method, seed=0)  # validates the overrides now, not mid-comparison
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ConfigError(f"methods: duplicate labels {duplicates}")
        if not self.seeds:
            raise ConfigError("seeds is empty")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CompareSpec:
        return from_mapping(cls, values, "comparison")

    @classmethod
    def from_yaml(cls, path: str | Path) -> CompareSpec:
        with open(path) as handle:
            return cls.from_dict(yaml.safe_load(handle) or {})

    def run_dir(self, label: str, seed: int) -> Path:
        return run_dir(self.output_dir, label, seed)

    def run_config(self, method: dict[str, Any], *, seed: int) -> FlowConfig:
        overrides = {k: v for k, v in method.items() if k != "label"}
        values = {
            **self.trainer,
            **overrides,
            "seed": seed,
            "output_dir": str(self.run_dir(method["label"], seed)),
        }
        try:
            return FlowConfig.from_dict(values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"method {method['label']!r}: {err}") from err


def run_one(spec: CompareSpec, method: dict[str, Any], seed: int, *, resume: bool, threads: int | None) -> dict[str, Any]:
    """Train one (method, seed) and return its evaluation trajectory."""
    import torch

    from adrpo.core.monitor import read_alarms
    from adrpo.flow.trainer import FlowTrainer
    from adrpo.tasks import build_task

    config = spec.run_config(method, seed=seed)
    if threads:  # a worker process: one thread each, and no per-run bars interleaving
        torch.set_num_threads(threads)
        config = dataclasses.replace(config, progress_bar=False)
    if not resume:
        shutil.rmtree(config.output_dir, ignore_errors=True)
    task = build_task(spec.task, spec.task_args, seed=seed)
    trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts, diversity_fn=task.embed)
    rows = trainer.train(resume_from_checkpoint=resume, evaluator=task.evaluate, eval_steps=spec.eval_steps)
    trajectory = [
        {"step": row["step"], **{k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}}
        for row in rows
        if any(k.startswith("eval/") for k in row)
    ]
    # the collapse monitor's alarms (None: monitor off); the file survives a resume, the trainer object does not
    alarms = None if config.monitor == "off" else [a.to_dict() for a in read_alarms(Path(config.output_dir) / "alarms.jsonl")]
    return {"label": method["label"], "seed": seed, "config": config.to_dict(), "trajectory": trajectory, "alarms": alarms}


def run_compare(spec: CompareSpec, *, resume: bool = False) -> dict[str, Any]:
    """Run every (method, seed); returns ``{"spec": ..., "runs": [...]}`` in spec order."""
    jobs = [(method, seed) for seed in spec.seeds for method in spec.methods]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    bar = tqdm(total=len(jobs), desc="runs", dynamic_ncols=True)
    if spec.workers == 1:
        for method, seed in jobs:
            results[(method["label"], seed)] = run_one(spec, method, seed, resume=resume, threads=None)
            bar.update(1)
    else:
        from adrpo.tasks import build_task

        build_task(spec.task, spec.task_args, seed=spec.seeds[0])  # pretrain and cache once, not per worker
        with ProcessPoolExecutor(spec.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, spec, method, seed, resume=resume, threads=1): (method["label"], seed) for method, seed in jobs}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
    bar.close()
    runs = [results[(method["label"], seed)] for method, seed in jobs]
    return {"spec": dataclasses.asdict(spec), "runs": runs}
