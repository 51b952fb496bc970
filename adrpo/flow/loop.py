"""The training loop of a :class:`adrpo.flow.trainer.FlowTrainer`: check and prepare the run
directory, resume or start, evaluate, step, log to ``metrics.jsonl`` and the trackers, call the
callbacks, checkpoint, stop.

It drives the trainer through the trainer's own methods (``step``, ``save_checkpoint``,
``load_checkpoint``); :meth:`FlowTrainer.train` is its public entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from adrpo.errors import ConfigError
from adrpo.flow import checkpointing, run_directory
from adrpo.flow import resume as resuming
from adrpo.flow.callbacks import stop_agreed

if TYPE_CHECKING:
    from adrpo.flow.trainer import FlowTrainer

Evaluator = Callable[["FlowTrainer"], dict[str, float]]


def train(
    trainer: FlowTrainer, *, resume_from_checkpoint: bool | str, overwrite: bool, allow_config_changes: Sequence[str],
    evaluator: Evaluator | None, eval_steps: int,
) -> list[dict[str, float]]:
    """See :meth:`adrpo.flow.trainer.FlowTrainer.train`."""
    cfg = trainer.config
    accelerator = trainer.accelerator
    check_run_directory(trainer, resume_from_checkpoint, overwrite=overwrite, allow_config_changes=allow_config_changes)
    if overwrite and accelerator.is_main_process:
        run_directory.clear_run(trainer.output_dir)
    if resume_from_checkpoint:
        resume(trainer, resume_from_checkpoint)
    elif accelerator.is_main_process:
        trainer.metrics_log.truncate_after(-1)
    trainer.should_stop = False
    if accelerator.is_main_process:
        run_directory.save_config(trainer.output_dir, cfg)  # once resumed: a resume that fails changes nothing
        kept = trainer.metrics_log.read()
        for callback in trainer.callbacks:
            if hasattr(callback, "on_train_begin"):
                callback.on_train_begin(trainer, kept)
    if evaluator is not None and trainer.state.step == 0:
        log(trainer, {f"eval/{k}": v for k, v in evaluator(trainer).items()})
    bar = tqdm(
        total=cfg.num_steps, initial=trainer.state.step, desc=f"{cfg.method}", dynamic_ncols=True,
        disable=not (cfg.progress_bar and accelerator.is_main_process),
    )
    while trainer.state.step < cfg.num_steps:
        step = trainer.state.step + 1
        evaluating = evaluator is not None and (step == cfg.num_steps or (eval_steps and step % eval_steps == 0))
        logging = evaluating or step % cfg.logging_steps == 0 or step == cfg.num_steps
        metrics = trainer.step(divergence_to_base=logging)
        if evaluating:
            metrics.update({f"eval/{k}": v for k, v in evaluator(trainer).items()})
        if logging:
            log(trainer, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", w2=f"{metrics['w2']:.4f}")
        stop = stop_requested(trainer)
        if stop or step == cfg.num_steps or (cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0):
            trainer.save_checkpoint()
        if stop:
            break
    bar.close()
    for tracker in accelerator.trackers:  # end_training() less its destroy_process_group: an export's gather follows
        tracker.finish()
    return trainer.metrics_log.read()


def check_run_directory(
    trainer: FlowTrainer, resume_from_checkpoint: bool | str, *, overwrite: bool, allow_config_changes: Sequence[str],
) -> None:
    """Refuse a start that would mix two runs in ``output_dir`` (:mod:`adrpo.flow.run_directory`):
    a fresh start into a run not to be overwritten, a resume under other result-changing settings.

    Every process checks (the same files, so the same answer, and none waits on one that raised),
    and none goes on before all have: only then does the main process write.
    """
    directory = trainer.output_dir
    if resume_from_checkpoint and overwrite:
        raise ConfigError("resume_from_checkpoint and overwrite exclude each other: resume the run or replace it")
    if not resume_from_checkpoint:
        run_directory.check_fresh_start(directory, overwrite=overwrite)
    elif resume_from_checkpoint is not True or checkpointing.list_checkpoints(trainer.checkpoint_root) or any(
            trainer.checkpoint_root.glob(f".old-{checkpointing.CHECKPOINT_PREFIX}*")):  # something to resume
        run_directory.check_resume(directory, trainer.config, allow_changes=allow_config_changes)
    trainer.accelerator.wait_for_everyone()


def log(trainer: FlowTrainer, metrics: dict[str, float]) -> None:
    """Send ``metrics`` to the trackers; on the main process append ``{"step": s, **metrics}`` to
    ``metrics.jsonl`` and hand that row to every callback."""
    trainer.accelerator.log(metrics, step=trainer.state.step)
    if trainer.accelerator.is_main_process:
        row = {"step": trainer.state.step, **metrics}
        trainer.metrics_log.append(row)
        for callback in trainer.callbacks:
            callback.on_log(trainer, row)


def stop_requested(trainer: FlowTrainer) -> bool:
    """``should_stop`` as set on the main process (where callbacks run), agreed by every process."""
    return stop_agreed(trainer.accelerator, trainer.should_stop) if trainer.callbacks else trainer.should_stop


def resume(trainer: FlowTrainer, resume_from_checkpoint: bool | str) -> None:
    """Load the newest intact checkpoint (True) or the one at a path, then drop the rows of
    ``metrics.jsonl`` logged after its step; True without a checkpoint is a fresh start."""
    accelerator = trainer.accelerator
    if resume_from_checkpoint is True:
        path = resuming.load_newest_intact(accelerator, trainer.checkpoint_root)
        if path is None:
            if accelerator.is_main_process:
                trainer.metrics_log.truncate_after(-1)
            return
    else:
        trainer.load_checkpoint(resume_from_checkpoint)
    if accelerator.is_main_process:
        trainer.metrics_log.truncate_after(trainer.state.step)
