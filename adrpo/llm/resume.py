"""Exact resume for TRL's GRPOTrainer: a run stopped after a checkpoint (``kill -9`` included) and continued
with ``resume_from_checkpoint`` gives the same weights and logged rows as a run never stopped.

transformers restores the model, optimizer, scheduler, RNG states and ``TrainerState`` and skips the batches
already consumed; three parts of TRL 1.16's state are not in a checkpoint, and each made a resumed run diverge
(measured on a tiny Qwen2, tests/test_llm_resume.py):

- the prompt order after the first epoch. TRL's ``RepeatSampler`` draws one permutation per epoch from a
  generator seeded once, and has no ``set_epoch``; transformers 5 no longer replays the finished epochs, so a
  run resumed in epoch e > 0 sees epoch 0's order again. :class:`EpochSeededRepeatSampler` re-derives the
  generator in ``set_epoch(e)`` (reseed, then e permutations drawn), called at the start of every epoch: the
  order of an uninterrupted run is bit for bit unchanged, and a resumed run gets epoch e's.
- the generation buffer. With ``steps_per_generation`` or ``num_iterations`` > 1 one generation serves
  several optimizer steps, held in ``_buffered_inputs`` and indexed by the micro-step counter ``_step``,
  both lost with the process: a resume mid-buffer regenerated new completions from the restored RNG and
  restarted the buffer's phase. Both are saved in ``generation_buffer-<process>.pt`` in each checkpoint and
  loaded on resume.
- the moving reference. With ``sync_ref_model`` TRL rebuilds the reference from the model's path, i.e. the
  base, and keeps moving it from there: the reference is saved in ``moving_reference.safetensors`` and
  loaded on resume (not under DeepSpeed or FSDP, whose reference is sharded: a warning says so).

Not covered: iterable datasets (TRL shuffles them in a buffer, outside the sampler), and a resume with another
number of processes. transformers' final summary row (``train_loss``, ``train_runtime``, ...) describes one
``train()`` call and so differs after a resume by design; so does the first logged row after a resume when the
checkpoint falls inside a logging interval (``save_steps`` not a multiple of ``logging_steps``: a warning says
so), since the metrics averaged over an interval are not in a checkpoint either.

The model's own weights: transformers' ``Trainer._load_from_checkpoint`` loads the saved names as they are,
but transformers 5's ``save_pretrained`` writes them in the checkpoint's original format, which for models with
a conversion mapping (Qwen2-Audio: ``audio_tower.*`` on disk, ``model.audio_tower.*`` in memory; by transformers
issue #43701, open when checked on 2026-12-03, VLMs such as Qwen2.5-VL too) matches none of the model's names:
every key is "missing" and "unexpected", and the resumed run silently trains on from the base weights with the
checkpoint's optimizer (measured on a tiny Qwen2-Audio: weights and rows differed). Where the saved names
are not the model's, :meth:`ExactResume._load_from_checkpoint` reads the checkpoint back with
``from_pretrained``, which applies the mapping. The ``lm_head.weight`` that transformers reports missing on a
tied-embedding checkpoint (Qwen2 here) is harmless: ``save_pretrained`` leaves the tied head out on purpose, and
the reloaded head is the embedding, tied (checked in the test).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import RepeatSampler

BUFFER_FILE = "generation_buffer-{process}.pt"
REFERENCE_FILE = "moving_reference.safetensors"
TRAINER_STATE = "trainer_state.json"


def newest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` of ``output_dir`` whose ``trainer_state.json`` reads back; None when there is none.

    transformers writes that file last and in place: a save killed before it leaves a folder without it (which
    transformers' own ``get_last_checkpoint`` would pick by its number and fail to load), one killed while writing
    it a torn file; either is passed over for the one before (``save_total_limit`` removes that one only after
    the newer state is written).
    """
    numbered = [(int(path.name.rsplit("-", 1)[1]), path) for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                if path.name.rsplit("-", 1)[1].isdigit()]
    for _, path in sorted(numbered, reverse=True):
        try:
            json.loads((path / TRAINER_STATE).read_text())
        except (OSError, ValueError):
            continue
        return path
    return None


def checkpoint_state(checkpoint: Path) -> TrainerState:
    """The ``TrainerState`` a checkpoint holds (its step, max_steps and logged rows)."""
    return TrainerState.load_from_json(str(checkpoint / TRAINER_STATE))


def reached_max_steps(state: TrainerState, max_steps: int) -> bool:
    """Whether the run saved in ``state`` had reached ``max_steps`` (> 0; a run whose epochs set its length is
    never taken as finished here). transformers checks ``max_steps`` only after a step, so training from such a
    checkpoint trains one step more whenever ``max_steps`` is not a whole number of epochs."""
    return max_steps > 0 and state.global_step >= max_steps


def saved_weight_names(checkpoint: Path) -> set[str] | None:
    """The tensor names of a ``save_pretrained`` folder's safetensors (one file or an index); None without them."""
    from safetensors import safe_open

    if (checkpoint / "model.safetensors.index.json").exists():
        return set(json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"])
    if (checkpoint / "model.safetensors").exists():
        with safe_open(str(checkpoint / "model.safetensors"), "pt") as handle:
            return set(handle.keys())
    return None


def moved(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in its dicts, lists and tuples moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(moved(v, device) for v in value)
    return value


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose permutation in epoch e depends on (seed, e) only, not on how many
    epochs this object has iterated: ``set_epoch(e)`` reseeds and draws the e permutations before it."""

    @classmethod
    def like(cls, sampler: RepeatSampler) -> EpochSeededRepeatSampler:
        return cls(sampler.data_source, sampler.mini_repeat_count, batch_size=sampler.batch_size, repeat_count=sampler.repeat_count,
                   shuffle=sampler.shuffle, seed=sampler.seed)

    def set_epoch(self, epoch: int) -> None:
        if not self.shuffle or self.seed is None:  # unshuffled: nothing to restore; unseeded: nothing to reproduce
            return
        self.generator.manual_seed(self.seed)
        for _ in range(epoch):
            torch.randperm(self.num_samples, generator=self.generator)


class ExactResume:
    """Mix into a GRPOTrainer subclass (before it in the bases) for an exact resume; see the module docstring.

    Overrides ``_get_train_sampler`` (the same sampler, with ``set_epoch``), ``_run_epoch`` (calls it),
    ``_save_checkpoint`` (writes the buffer and the moving reference, then TRL's checkpoint),
    ``_load_optimizer_and_scheduler`` (TRL's and transformers' resume hook: reads them back) and
    ``_load_from_checkpoint`` (the model's weights under their saved names). An uninterrupted run trains
    exactly as without it.
    """

    _epoch_sampler: EpochSeededRepeatSampler | None = None  # the training sampler, once TRL has asked for it

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        a = self.args
        if (a.save_strategy == "steps" and a.logging_strategy == "steps" and a.save_steps >= 1 and a.logging_steps >= 1
                and a.save_steps % a.logging_steps):
            warnings.warn(f"save_steps ({a.save_steps}) is not a multiple of logging_steps ({a.logging_steps}): the first row "
                          "logged after a resume averages only the steps after the checkpoint", stacklevel=2)

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is RepeatSampler:
            sampler = self._epoch_sampler = EpochSeededRepeatSampler.like(sampler)
        return sampler

    def _run_epoch(self, *args, **kwargs):
        # accelerate forwards set_epoch to a sampler at most two wrappers deep; under DDP the first epoch of a resumed
        # run wraps it three deep (SkipBatchSampler, BatchSamplerShard, BatchSampler): set it where transformers names
        # the epoch
        if self._epoch_sampler is not None:
            self._epoch_sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        # written before TRL's and transformers' files, whose trainer_state.json comes last: a checkpoint that
        # has one has these too, also when the run was killed while saving
        if not self.args.save_only_model:  # without the optimizer either, such a checkpoint cannot resume
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"step": self._step, "buffered_inputs": self._buffered_inputs},
                       folder / BUFFER_FILE.format(process=self.accelerator.process_index))
            if self.args.sync_ref_model and self.accelerator.is_main_process:
                reference = self._moving_reference()
                if reference is not None:
                    from safetensors.torch import save_model

                    save_model(reference, str(folder / REFERENCE_FILE))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = self.model if model is None else model
        saved = saved_weight_names(Path(resume_from_checkpoint))
        if saved is None or not isinstance(target, PreTrainedModel) or saved <= set(target.state_dict()):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # the names match (PEFT: an adapter)
        reloaded = type(target).from_pretrained(resume_from_checkpoint, dtype=target.dtype)  # applies the conversion mapping
        target.load_state_dict(reloaded.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        buffer = Path(checkpoint) / BUFFER_FILE.format(process=self.accelerator.process_index)
        if buffer.exists():
            # loaded on the CPU, then moved: torch.load cannot map to the "cpu:0" that accelerate names under CPU DDP
            state = torch.load(buffer, map_location="cpu", weights_only=True)
            self._step, self._buffered_inputs = state["step"], moved(state["buffered_inputs"], self.accelerator.device)
        elif (self.state.global_step * self.args.gradient_accumulation_steps) % (self.args.steps_per_generation * self.num_iterations):
            warnings.warn(f"{checkpoint} has no {buffer.name} and was saved inside a generation buffer: the resumed run "
                          "generates new completions where the original reused its buffer", stacklevel=2)
        if self.args.sync_ref_model:
            reference, path = self._moving_reference(), Path(checkpoint) / REFERENCE_FILE
            if reference is not None and path.exists():
                from safetensors.torch import load_model

                load_model(reference, str(path), device="cpu")  # then copied into the reference's own parameters
            elif reference is not None:
                warnings.warn(f"{checkpoint} has no {REFERENCE_FILE}: the moving reference restarts from the base model", stacklevel=2)

    def _moving_reference(self) -> torch.nn.Module | None:
        """TRL's reference model, or None (with a warning) where it is sharded and so not saved here."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            warnings.warn("the moving reference (sync_ref_model) is not saved in checkpoints under DeepSpeed or FSDP: "
                          "a resumed run restarts it from the base model", stacklevel=3)
            return None
        return self.accelerator.unwrap_model(self.ref_model)
