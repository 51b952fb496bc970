"""The task-specific halves of the experiment engine: how a configuration is resolved into a
trainer config, trained, evaluated on held-out prompts and turned into a
:class:`adrpo.experiments.engine.RunResult`. One backend per kind of task, both through the
trainers' public API.

- flow (digits, text_to_image): :class:`adrpo.flow.trainer.FlowTrainer` with the task's
  evaluator every ``eval.steps`` (default 50) steps; the collapse monitor is the trainer's
  (``trainer.monitor``); a run resumes from its newest checkpoint.
- llm (arithmetic, audio_qa): TRL's GRPOTrainer with the audio path,
  :class:`adrpo.llm.audio.AudioGRPOTrainer` (``trainer: grpo``; stock TRL on text), or
  :class:`adrpo.llm.trainer.ADRPOTrainer` (``trainer: adrpo``) with a held-out evaluation
  callback (``eval: {steps, group, prompts}``) and the collapse monitor of ``spec.monitor``. Each
  task module offers the same five names (:data:`LLM_TASKS`). A run checkpoints every ``eval.steps``
  steps and resumes from its newest finished checkpoint, exactly (:mod:`adrpo.experiments.llm_resume`).

Every result records the step its run was to end at (``target_step``: flow ``num_steps``, LLM the
trainer's ``max_steps``), so that a run that ended before it stays out of the fronts.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adrpo.errors import ConfigError
from adrpo.experiments.spec import Configuration, ExperimentSpec

if TYPE_CHECKING:
    from adrpo.experiments.engine import Job, RunResult

CPU_DEFAULTS = {"bf16": False, "gradient_checkpointing": False, "use_cpu": True}
EVAL_STEPS = 10  # an LLM run's default evaluation (and checkpoint) interval
PLACEHOLDER_DIR = "<run directory>"


class Backend(Protocol):
    def resolve(self, spec: ExperimentSpec, configuration: Configuration, seed: int) -> dict[str, Any]:
        """The configuration's trainer settings that differ from the trainer's defaults, validated
        (errors name the label)."""
        ...

    def prepare(self, spec: ExperimentSpec) -> None:
        """Build and cache what every run of ``spec`` shares (pretrained models) in this process."""
        ...

    def run(self, spec: ExperimentSpec, job: Job, *, threads: int | None) -> RunResult:
        """Train and evaluate one job in ``job.directory``."""
        ...

    def target_step(self, config: dict[str, Any]) -> int | None:
        """The step a run of this (resolved, ``to_dict``) trainer config is to end at (None: not known
        from the config alone)."""
        ...

    def checkpoint(self, directory: Path) -> Path | None:
        """The checkpoint a run in ``directory`` resumes from (None: it starts afresh)."""
        ...

    def finish(self, directory: Path) -> None:
        """Called once the run's result is saved: remove what a finished run no longer needs."""
        ...


def non_default_fields(config: Any) -> dict[str, Any]:
    """A config dataclass's fields whose values differ from the field defaults: what identifies a
    configuration, so that a field added later with a default changes no run's identity."""
    changed = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(config, f.name)
        if default is dataclasses.MISSING or value != default:
            changed[f.name] = value
    return changed


def backend_for(spec: ExperimentSpec) -> Backend:
    return FlowBackend() if spec.kind == "flow" else LLMBackend()


def _named(configuration: Configuration, build):
    try:
        return build()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method {configuration.label!r}: {err}") from err


class FlowBackend:
    """Flow tasks on :class:`FlowTrainer`."""

    def resolve(self, spec: ExperimentSpec, configuration: Configuration, seed: int) -> dict[str, Any]:
        return non_default_fields(self.config(spec, configuration, seed, PLACEHOLDER_DIR))

    @staticmethod
    def config(spec: ExperimentSpec, configuration: Configuration, seed: int, output_dir: str):
        from adrpo.flow.config import FlowConfig

        values = {**spec.trainer, **configuration.overrides, "seed": seed, "output_dir": output_dir}
        return _named(configuration, lambda: FlowConfig.from_dict(values))

    def target_step(self, config: dict[str, Any]) -> int:
        return int(config["num_steps"])

    def checkpoint(self, directory: Path) -> Path | None:
        from adrpo.flow.checkpointing import latest_checkpoint

        return latest_checkpoint(directory / "checkpoints")

    def finish(self, directory: Path) -> None:
        """Nothing: a flow run's checkpoints hold its trained weights (``adrpo fm export``)."""

    def prepare(self, spec: ExperimentSpec) -> None:
        from adrpo.tasks import build_task

        build_task(spec.task, spec.task_args, seed=spec.seeds[0])

    def run(self, spec: ExperimentSpec, job: Job, *, threads: int | None) -> RunResult:
        import torch

        from adrpo.core.monitor import read_alarms
        from adrpo.experiments.engine import RunResult
        from adrpo.experiments.grids import save_samples
        from adrpo.flow.trainer import FlowTrainer
        from adrpo.tasks import build_task

        config = self.config(spec, job.configuration, job.seed, str(job.directory))
        if threads:  # a worker process: one thread each, and no per-run bars interleaving
            torch.set_num_threads(threads)
            config = dataclasses.replace(config, progress_bar=False)
        task = build_task(spec.task, spec.task_args, seed=job.seed)
        trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts, diversity_fn=task.embed)
        stopped = monitor_stopped_checkpoint(config.monitor, job.directory)
        if stopped is None:
            rows = trainer.train(resume_from_checkpoint=True, evaluator=task.evaluate, eval_steps=spec.eval.get("steps", 50))
        else:  # `fm train --resume` would go on past the stop; the sweep's run ended there
            trainer.load_checkpoint(stopped)
            rows = trainer.metrics_log.read()
        trajectory = [
            {"step": row["step"], **{k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}}
            for row in rows
            if any(k.startswith("eval/") for k in row)
        ]
        # the collapse monitor's alarms (None: monitor off); the file survives a resume, the trainer object does not
        alarms = None if config.monitor == "off" else [a.to_dict() for a in read_alarms(job.directory / "alarms.jsonl")]
        # the final and base policies' held-out samples from the evaluation noise, for the report's image grid
        samples = save_samples(trainer, task, job.directory)
        c = job.configuration
        return RunResult(c.label, c.family, c.role, job.seed, job.digest, str(job.directory), config.to_dict(), trajectory, alarms,
                         samples=samples, target_step=config.num_steps)


def monitor_stopped_checkpoint(policy: str, directory: Path) -> Path | None:
    """The checkpoint a flow run in ``directory`` saved when its collapse monitor stopped it (``policy`` "stop":
    an alarm in ``alarms.jsonl`` at or before the newest checkpoint's step, which is then the stop's), or None.

    A sweep killed after that checkpoint and before the run's result was written finds the run unfinished;
    resuming it would train on past the stop, which the same sweep uninterrupted does not. An alarm after the
    newest checkpoint (killed before the stop's checkpoint was written) leaves the run to resume: it retrains
    from that checkpoint to the same alarm and stops there again."""
    from adrpo.core.monitor import read_alarms
    from adrpo.flow.checkpointing import latest_checkpoint, step_of

    checkpoint = latest_checkpoint(directory / "checkpoints")
    if policy != "stop" or checkpoint is None:
        return None
    alarms = read_alarms(directory / "alarms.jsonl")
    return checkpoint if any(alarm.step <= step_of(checkpoint) for alarm in alarms) else None


# Each LLM task module offers: SETTINGS (a dataclass built from task_args), base_model_path(settings),
# split_rows(settings) -> (train rows, held-out rows), reward_funcs(), and
# evaluation_callback(path, rows, *, steps, group, max_new_tokens, seed, monitor).
LLM_TASKS = {"arithmetic": "adrpo.tasks.arithmetic", "audio_qa": "adrpo.tasks.audio_qa"}


def llm_task(name: str):
    import importlib

    return importlib.import_module(LLM_TASKS[name])


@contextmanager
def quiet_model_loading() -> Iterator[None]:
    """transformers' progress bars (its "Loading weights" bar at every ``from_pretrained``) off within the
    block, back on after it if they were on: an LLM run loads three models, whose bars would break the
    engine's own "runs" bar into lines."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class LLMBackend:
    """The LLM miniatures (arithmetic, audio QA) on TRL's GRPOTrainer (fixed β) or ADRPOTrainer."""

    def resolve(self, spec: ExperimentSpec, configuration: Configuration, seed: int) -> dict[str, Any]:
        # without the engine's checkpoints, which change no result: the identity runs had before they were checkpointed
        return non_default_fields(self.args(spec, configuration, seed, PLACEHOLDER_DIR, checkpoints=False))

    @staticmethod
    def args(spec: ExperimentSpec, configuration: Configuration, seed: int, output_dir: str, *, checkpoints: bool = True):
        """The run's GRPOConfig / ADRPOConfig; with ``checkpoints``, saving at the engine's cadence
        (:func:`adrpo.experiments.llm_resume.checkpoint_settings`) unless the spec sets its own."""
        from trl import GRPOConfig

        from adrpo.experiments.llm_resume import checkpoint_settings
        from adrpo.llm.config import ADRPOConfig

        kind = configuration.overrides.get("trainer")
        if kind not in ("grpo", "adrpo"):
            raise ConfigError(f"method {configuration.label!r}: trainer must be 'grpo' or 'adrpo', got {kind!r}")
        overrides = {k: v for k, v in configuration.overrides.items() if k != "trainer"}
        saving = checkpoint_settings(spec.eval.get("steps", EVAL_STEPS)) if checkpoints else {"save_strategy": "no"}
        values = {**CPU_DEFAULTS, "report_to": "none", **saving, "logging_steps": 1,
                  **spec.trainer, **overrides, "seed": seed, "output_dir": output_dir}

        def build():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return (ADRPOConfig if kind == "adrpo" else GRPOConfig)(**values)

        return _named(configuration, build)

    @staticmethod
    def settings(spec: ExperimentSpec):
        from adrpo.settings import from_mapping

        return from_mapping(llm_task(spec.task).SETTINGS, spec.task_args, "task_args")

    def target_step(self, config: dict[str, Any]) -> int | None:
        return int(config["max_steps"]) if config.get("max_steps", -1) > 0 else None  # -1: epochs decide

    def checkpoint(self, directory: Path) -> Path | None:
        from adrpo.llm.resume import newest_complete_checkpoint

        return newest_complete_checkpoint(directory)

    def finish(self, directory: Path) -> None:
        from adrpo.experiments.llm_resume import drop_checkpoints

        drop_checkpoints(directory)

    def prepare(self, spec: ExperimentSpec) -> None:
        llm_task(spec.task).base_model_path(self.settings(spec))

    def run(self, spec: ExperimentSpec, job: Job, *, threads: int | None) -> RunResult:
        import torch

        if threads:
            torch.set_num_threads(threads)
        with quiet_model_loading():
            return self._run(spec, job)

    def _run(self, spec: ExperimentSpec, job: Job) -> RunResult:
        from datasets import Dataset

        from adrpo.experiments.engine import RunResult
        from adrpo.experiments.llm_resume import ResumableEvaluation, training_ended
        from adrpo.llm.audio import AudioGRPOTrainer
        from adrpo.llm.callbacks import monitor_callback
        from adrpo.llm.resume import checkpoint_state
        from adrpo.llm.trainer import ADRPOTrainer

        task = llm_task(spec.task)
        settings = self.settings(spec)
        path = task.base_model_path(settings)
        train_rows, held_out = task.split_rows(settings)
        args = self.args(spec, job.configuration, job.seed, str(job.directory))
        monitor = monitor_callback(spec.monitor)
        evaluation = ResumableEvaluation(task.evaluation_callback(
            path, held_out[: spec.eval.get("prompts", 50)], steps=spec.eval.get("steps", EVAL_STEPS), group=spec.eval.get("group", 8),
            max_new_tokens=args.max_completion_length, seed=1000 + job.seed, monitor=monitor,
        ), monitor)
        checkpoint = self.checkpoint(job.directory)
        state = None if checkpoint is None else checkpoint_state(checkpoint)
        if state is not None:
            evaluation.restore(state)
        if state is None or not training_ended(state, monitor):  # TRL would train one step past a run that had ended
            trainer_cls = ADRPOTrainer if job.configuration.overrides["trainer"] == "adrpo" else AudioGRPOTrainer
            state = train(trainer_cls, checkpoint, model=str(path), reward_funcs=task.reward_funcs(), args=args,
                          train_dataset=Dataset.from_list(train_rows),
                          callbacks=[monitor, evaluation] if monitor else [evaluation])  # the monitor resets first
        logged = [row for row in state.log_history if "reward" in row]
        keys = ("step", "reward", "kl", "entropy", "adrpo/coef_mean", "adrpo/frac_clipped")
        c = job.configuration
        return RunResult(
            c.label, c.family, c.role, job.seed, job.digest, str(job.directory), args.to_dict(), evaluation.trajectory,
            alarms=None if monitor is None else [alarm.to_dict() for alarm in monitor.alarms],
            train_log=[{k: row.get(k) for k in keys} for row in logged], target_step=state.max_steps,
        )


def train(trainer_cls: type, checkpoint: Path | None, **build: Any):
    """Build ``trainer_cls(**build)`` and train it (from ``checkpoint`` when given) without per-step prints;
    returns its final ``TrainerState``."""
    from transformers import PrinterCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = trainer_cls(**build)
        trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; TRL's logs stay in log_history
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    return trainer.state
