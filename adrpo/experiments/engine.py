"""One engine for (configuration × seed) jobs on a flow or an LLM task.

Every job gets the run directory ``output_dir/runs/<slug>-<hash>/seed-<s>``: a readable slug of
its label and a short hash of its *resolved* configuration (task, task arguments, evaluation
and every trainer field whose resolved value differs from the trainer's default, without the
seed and the output directory), so two labels that read alike never share a directory, a
changed setting never reuses an old run, and a trainer field added later with a default keeps
every finished run. Code changes (a changed default included) are not detected: use ``force``.
A run is complete once its ``result.json`` is written (atomically, last); re-running or
extending an experiment loads complete runs instead of training them again, resumes
incomplete flow runs from their newest checkpoint, and ``force=True`` retrains everything.

The task-specific halves (how to resolve a configuration, train it and evaluate it) are the
backends in :mod:`adrpo.experiments.backends`; the results are :class:`RunResult` records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from adrpo.errors import ConfigError
from adrpo.experiments.spec import Configuration, ExperimentSpec

RESULT_FILE = "result.json"


@dataclass
class RunResult:
    """One finished (configuration, seed) run.

    ``trajectory`` holds the held-out evaluations ``{"step": s, "reward": ..., ...}`` from step 0
    (the base model) to the end; ``alarms`` the collapse monitor's (None: monitor off);
    ``train_log`` the trainer's logged rows where kept (LLM runs); ``samples`` the file of the
    final evaluation's samples inside the run ``directory`` (flow runs), for image grids.
    """

    label: str
    family: str
    role: str
    seed: int
    config_hash: str
    directory: str
    config: dict[str, Any]
    trajectory: list[dict[str, float]]
    alarms: list[dict[str, Any]] | None = None
    train_log: list[dict[str, Any]] | None = None
    samples: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResult:
        return cls(**values)


def slug(label: str) -> str:
    """A file-name form of a label: ``"ORW-CFM-W2 (α=0.1)"`` -> ``"ORW-CFM-W2_α=0.1"`` (letters of
    any script, digits and ``.=_-`` kept; every other run of characters becomes one ``_``)."""
    return re.sub(r"[^\w.=-]+", "_", label).strip("_") or "run"


def config_hash(spec: ExperimentSpec, resolved: dict[str, Any]) -> str:
    """8 hex digits of the job's identity: the task, its arguments, the evaluation and the resolved
    trainer configuration (``resolved`` without its seed and output directory)."""
    identity = {"task": spec.task, "task_args": spec.task_args, "eval": spec.eval,
                "config": {k: v for k, v in resolved.items() if k not in ("seed", "output_dir")}}
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def run_dir(spec: ExperimentSpec, configuration: Configuration, digest: str, seed: int) -> Path:
    return Path(spec.output_dir) / "runs" / f"{slug(configuration.label)}-{digest}" / f"seed-{seed}"


@dataclass(frozen=True)
class Job:
    """One (configuration, seed) with its resolved identity and directory."""

    configuration: Configuration
    seed: int
    digest: str
    directory: Path


def plan(spec: ExperimentSpec) -> list[Job]:
    """Every job of ``spec`` in spec order (seeds outer, configurations inner), each configuration
    resolved and validated now, so that a bad one fails before any training."""
    from adrpo.experiments.backends import backend_for

    backend = backend_for(spec)
    jobs = []
    for seed in spec.seeds:
        seen: dict[str, str] = {}
        for configuration in spec.configurations():
            digest = config_hash(spec, backend.resolve(spec, configuration, seed))
            if digest in seen:
                raise ConfigError(f"methods {seen[digest]!r} and {configuration.label!r} resolve to the same configuration")
            seen[digest] = configuration.label
            jobs.append(Job(configuration, seed, digest, run_dir(spec, configuration, digest, seed)))
    return jobs


def load_complete(job: Job) -> RunResult | None:
    """The job's saved result when its run finished with this configuration, else None; its label,
    family and role are the job's (a relabelled method keeps its finished runs)."""
    path = job.directory / RESULT_FILE
    if not path.is_file():
        return None
    result = RunResult.from_dict(json.loads(path.read_text()))
    if result.config_hash != job.digest:
        return None
    c = job.configuration
    return dataclasses.replace(result, label=c.label, family=c.family, role=c.role)


def save_result(job: Job, result: RunResult) -> None:
    """Write ``result.json`` atomically: the file that marks the run complete."""
    path = job.directory / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    os.replace(tmp, path)


def run_job(spec: ExperimentSpec, job: Job, *, force: bool, threads: int | None) -> RunResult:
    """Train one job (from scratch with ``force``, else resuming what its directory holds)."""
    from adrpo.experiments.backends import backend_for

    if force:
        shutil.rmtree(job.directory, ignore_errors=True)
    job.directory.mkdir(parents=True, exist_ok=True)
    result = backend_for(spec).run(spec, job, threads=threads)
    save_result(job, result)
    return result


def run_experiment(spec: ExperimentSpec, *, force: bool = False) -> dict[str, Any]:
    """Run every job of ``spec`` not already complete; returns ``{"spec": ..., "runs": [...]}``
    (run dicts in :func:`plan` order). ``force`` retrains complete runs too."""
    from adrpo.experiments.backends import backend_for

    jobs = plan(spec)
    results: dict[Path, RunResult] = {}
    if not force:
        for job in jobs:
            done = load_complete(job)
            if done is not None:
                results[job.directory] = done
    todo = [job for job in jobs if job.directory not in results]
    bar = tqdm(total=len(jobs), initial=len(results), desc="runs", dynamic_ncols=True)
    if todo and spec.workers > 1:
        backend_for(spec).prepare(spec)  # build and cache the task's models once, not in every worker
        with ProcessPoolExecutor(min(spec.workers, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_job, spec, job, force=force, threads=1): job for job in todo}
            for future in as_completed(futures):
                results[futures[future].directory] = future.result()
                bar.update(1)
    else:
        for job in todo:
            results[job.directory] = run_job(spec, job, force=force, threads=None)
            bar.update(1)
    bar.close()
    return {"spec": dataclasses.asdict(spec), "runs": [results[job.directory].to_dict() for job in jobs]}
