"""One engine for (configuration × seed) jobs on a flow or an LLM task.

Every job gets the run directory ``output_dir/runs/<slug>-<hash>/seed-<s>``: a readable slug of
its label and a short hash of its *resolved* configuration (task, task arguments, evaluation
and every trainer field whose resolved value differs from the trainer's default, without the
seed and the output directory), so two labels that read alike never share a directory, a
changed setting never reuses an old run, and a trainer field added later with a default keeps
every finished run. Code changes (a changed default included) are not detected: use ``force``.
A run is complete once its ``result.json`` is written (atomically, last); re-running or
extending an experiment loads complete runs instead of training them again (and says how many
it loaded and how many it trains), resumes incomplete runs from their newest checkpoint (flow:
``checkpoints/step-N``; LLM: TRL's ``checkpoint-N``, removed once the result is written), and
``force=True`` retrains everything. The spec's own fields are each either part of a run's
identity or declared result-neutral (:data:`IDENTITY_FIELDS`, :data:`RESOLVED_FIELDS`,
:data:`RESULT_NEUTRAL_FIELDS`; a test keeps the three complete).

Ctrl-C stops an experiment promptly: runs not started are cancelled, running worker processes
are killed (each resumes from its newest checkpoint on the next call), and :class:`Interrupted`
(a ``KeyboardInterrupt``) says what finished and how to resume. Worker processes ignore SIGINT
themselves, so that only this process decides. The collapse monitor's messages (logger
``adrpo.monitor``) of every run, in this process or a worker, are written through the progress
bar (``tqdm.write``), prefixed by the run.

Every experiment runs torch's and oneDNN's AVX2 CPU kernels on x86-64 (:mod:`adrpo.experiments.cpu_kernels`),
so its tables are the same on AVX2 and AVX-512 CPUs.

The task-specific halves (how to resolve a configuration, train it and evaluate it) are the
backends in :mod:`adrpo.experiments.backends`; the results are :class:`RunResult` records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import logging.handlers
import multiprocessing
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from adrpo.errors import ConfigError
from adrpo.experiments.spec import Configuration, ExperimentSpec

RESULT_FILE = "result.json"
MONITOR_LOGGER = "adrpo.monitor"
DEFAULT_MONITOR = "warn"
IDENTITY_FIELDS = ("task", "task_args", "eval", "monitor")
"""Spec fields hashed into every run's identity as they are (``monitor`` only when not the default
``"warn"``, and for LLM runs only: a flow run's monitor is its ``trainer.monitor``)."""
RESOLVED_FIELDS = ("trainer", "methods")
"""Spec fields that reach the identity through each job's resolved trainer configuration."""
RESULT_NEUTRAL_FIELDS = ("seeds", "workers", "output_dir")
"""Spec fields that change no run's result: a seed is its job's own (``seed-<s>`` in the run
directory), workers only run jobs side by side, the output directory holds them."""


@dataclass
class RunResult:
    """One finished (configuration, seed) run.

    ``trajectory`` holds the held-out evaluations ``{"step": s, "reward": ..., ...}`` from step 0
    (the base model) to the end; ``alarms`` the collapse monitor's (None: monitor off);
    ``train_log`` the trainer's logged rows where kept (LLM runs); ``samples`` the file of the
    final evaluation's samples inside the run ``directory`` (flow runs), for image grids;
    ``target_step`` the step the run was to end at (a run stopped early by the monitor ends before
    it: :func:`adrpo.experiments.fronts.is_finished`), required of every result and checked here,
    since a result without one could not be told from a finished run.
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
    target_step: int = dataclasses.field(kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.target_step, bool) or not isinstance(self.target_step, int) or self.target_step < 0:
            raise ValueError(f"{self.label!r} seed {self.seed}: target_step must be the step the run was to end at "
                             f"(an int >= 0), got {self.target_step!r}")

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
    """8 hex digits of the job's identity: the task, its arguments, the evaluation, the monitor (see
    :data:`IDENTITY_FIELDS`) and the resolved trainer configuration (``resolved`` without its seed and
    output directory)."""
    identity = {"task": spec.task, "task_args": spec.task_args, "eval": spec.eval,
                "config": {k: v for k, v in resolved.items() if k not in ("seed", "output_dir")}}
    if spec.kind == "llm" and spec.monitor != DEFAULT_MONITOR:  # the default stays out: finished runs keep their hash
        identity["monitor"] = spec.monitor
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


def load_complete(spec: ExperimentSpec, job: Job) -> RunResult | None:
    """The job's saved result when its run finished with this configuration, else None; its label,
    family and role are the job's (a relabelled method keeps its finished runs).

    A result saved before target steps were recorded gets its config's (flow ``num_steps``, LLM
    ``max_steps``); one whose config gives none (an LLM run whose epochs set its length) is trained
    again, with a line saying so: whether it ran to its end cannot be told, and a guess either way
    would put a run stopped early into the fronts or leave a configuration out of them for good.
    """
    from adrpo.experiments.backends import backend_for

    path = job.directory / RESULT_FILE
    if not path.is_file():
        return None
    values = json.loads(path.read_text())
    if values["config_hash"] != job.digest:
        return None
    if values.get("target_step") is None:
        values["target_step"] = backend_for(spec).target_step(values["config"])
        if values["target_step"] is None:
            print(f"{job.configuration.label!r} seed {job.seed}: its saved result records no target step and its config "
                  "gives none (max_steps unset): training it again", file=sys.stderr)
            return None
    c = job.configuration
    return dataclasses.replace(RunResult.from_dict(values), label=c.label, family=c.family, role=c.role)


def save_result(job: Job, result: RunResult) -> None:
    """Write ``result.json`` atomically: the file that marks the run complete."""
    path = job.directory / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    os.replace(tmp, path)


class _RunPrefix(logging.Filter):
    """Prefixes each record of the monitor's logger with the run it came from."""

    def __init__(self, job: Job):
        super().__init__()
        self.prefix = f"{job.configuration.label} seed {job.seed}: "

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.prefix + str(record.msg)
        return True


@contextmanager
def _monitor_messages_of(job: Job) -> Iterator[None]:
    prefix = _RunPrefix(job)
    logger = logging.getLogger(MONITOR_LOGGER)
    logger.addFilter(prefix)
    try:
        yield
    finally:
        logger.removeFilter(prefix)


def run_job(spec: ExperimentSpec, job: Job, *, force: bool, threads: int | None) -> RunResult:
    """Train one job (from scratch with ``force``, else resuming what its directory holds)."""
    from adrpo.experiments.backends import backend_for

    backend = backend_for(spec)
    if force:
        shutil.rmtree(job.directory, ignore_errors=True)
    job.directory.mkdir(parents=True, exist_ok=True)
    with _monitor_messages_of(job):
        result = backend.run(spec, job, threads=threads)
    save_result(job, result)
    backend.finish(job.directory)  # after the result: a run killed before it still has its checkpoint
    return result


class _ThroughBar(logging.Handler):
    """Writes records with ``tqdm.write``, so that an open progress bar stays one line."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


@contextmanager
def _monitor_through_bar(queue: Any | None) -> Iterator[None]:
    """Within the block, the monitor's messages of this process, and those ``queue`` brings from the
    workers, go through the bar (and not also to the root logger's handlers)."""
    logger = logging.getLogger(MONITOR_LOGGER)
    handler = _ThroughBar()
    listener = None if queue is None else logging.handlers.QueueListener(queue, handler)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    if listener is not None:
        listener.start()
    try:
        yield
    finally:
        if listener is not None:
            listener.stop()
        logger.removeHandler(handler)
        logger.propagate = propagate


def _worker_setup(queue: Any) -> None:
    """A worker process: Ctrl-C is for the parent to handle; the monitor's records go to its queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logger = logging.getLogger(MONITOR_LOGGER)
    logger.addHandler(logging.handlers.QueueHandler(queue))
    logger.propagate = False


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_experiment`; the message says what finished and how to resume."""


def _interrupted(spec: ExperimentSpec, jobs: list[Job], results: dict[Path, RunResult], loaded: int, running: int) -> Interrupted:
    trained = len(results) - loaded
    return Interrupted(
        f"interrupted: {len(results)} of {len(jobs)} runs are finished ({loaded} loaded, {trained} trained now); "
        f"{running} were running and were stopped, {len(jobs) - len(results) - running} had not started. "
        f"Run the same command again to resume: finished runs in {spec.output_dir}/runs are loaded, the others "
        "continue from their newest checkpoint."
    )


def run_experiment(spec: ExperimentSpec, *, force: bool = False) -> dict[str, Any]:
    """Run every job of ``spec`` not already complete; returns ``{"spec": ..., "runs": [...]}``
    (run dicts in :func:`plan` order). ``force`` retrains complete runs too.

    Raises:
        Interrupted: on Ctrl-C (see the module docstring); what finished stays finished.
    """
    from adrpo.experiments.cpu_kernels import pin_cpu_kernels

    pin_cpu_kernels()  # before anything computes: the same tables on AVX2 and AVX-512 CPUs
    from adrpo.experiments.backends import backend_for

    jobs = plan(spec)
    backend = backend_for(spec)
    results: dict[Path, RunResult] = {}
    if not force:
        for job in jobs:
            done = load_complete(spec, job)
            if done is not None:
                results[job.directory] = done
    loaded = len(results)
    todo = [job for job in jobs if job.directory not in results]
    resuming = sum(1 for job in todo if not force and backend.checkpoint(job.directory) is not None)
    print(f"runs: {loaded} of {len(jobs)} finished before and loaded from {spec.output_dir}/runs, {len(todo)} to train"
          + (f" ({resuming} resuming from a checkpoint)" if resuming else ""), file=sys.stderr)
    bar = tqdm(total=len(jobs), initial=loaded, desc="runs", dynamic_ncols=True)
    try:
        if todo and spec.workers > 1:
            _run_in_workers(spec, todo, results, bar, force=force, loaded=loaded, jobs=jobs)
        else:
            with _monitor_through_bar(None):
                for job in todo:
                    try:
                        results[job.directory] = run_job(spec, job, force=force, threads=None)
                    except KeyboardInterrupt:
                        raise _interrupted(spec, jobs, results, loaded, running=1) from None
                    bar.update(1)
    finally:
        bar.close()
    return {"spec": dataclasses.asdict(spec), "runs": [results[job.directory].to_dict() for job in jobs]}


def _run_in_workers(spec: ExperimentSpec, todo: list[Job], results: dict[Path, RunResult], bar, *, force: bool, loaded: int,
                    jobs: list[Job]) -> None:
    from adrpo.experiments.backends import backend_for

    backend_for(spec).prepare(spec)  # build and cache the task's models once, not in every worker
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    pool = ProcessPoolExecutor(min(spec.workers, len(todo)), mp_context=context, initializer=_worker_setup, initargs=(queue,))
    with _monitor_through_bar(queue):
        futures = {pool.submit(run_job, spec, job, force=force, threads=1): job for job in todo}
        interrupted = False
        try:
            for future in as_completed(futures):
                results[futures[future].directory] = future.result()
                bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            running = sum(1 for future in futures if future.running())
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in multiprocessing.active_children():  # the pool's workers: a resume covers their runs
                worker.kill()
            raise _interrupted(spec, jobs, results, loaded, running) from None
        finally:
            if not interrupted:  # a run that failed: the others still finish, as they always did
                pool.shutdown(wait=True)
