"""Audio-language models (Qwen2-Audio, the Qwen2.5-Omni thinker) on TRL's GRPOTrainer.

TRL 1.16's GRPOTrainer knows images only: it keeps the ``image``/``images`` columns, and passes
a fixed list of image arguments to its log-prob forward. :class:`AudioGRPOTrainer` adds audio
with small overrides (:class:`AudioPath`) and leaves every other part (sampling, rewards, advantages,
the loss types, buffering, DDP/DeepSpeed) to TRL:

- ``__init__`` (wrapped): the audio columns of the train and eval datasets are made readable
  (:func:`readable_audio`: ``datasets.Audio`` columns undecoded, read with soundfile; lists of samples
  as numpy arrays, since accelerate would walk a list sample by sample); a dataset with audio (an
  ``audio`` column, or audio parts in its prompts, every row's read from Arrow: :mod:`adrpo.llm.audio_datasets`)
  is checked here, from the arguments, on every rank and before TRL starts vLLM (see "Refused" below); and
  the model's audio token is never sampled (TRL suppresses the image token only, and reads
  ``config.image_token_id``, which Qwen2-Audio's config lacks, so it reads the audio token's id while TRL's
  ``__init__`` runs).

- ``_set_signature_columns_if_needed``: the ``audio`` column survives ``remove_unused_columns``.
- ``_generate_and_score_completions`` (wrapped): each row's clip is read and resampled to the feature
  extractor's rate (:func:`load_clip`) and its conversational prompt gets an audio part holding a short
  reference (:func:`audio_reference`, the file path or the row's id), which is what TRL copies, passes to
  the reward functions, gathers from every rank and logs (``log_completions``), instead of the waveform.
- ``_tokenize_prompts`` (wrapped): puts the clips into the audio parts (:func:`with_audio_part`) and has
  the model's processor render them; its feature extractor turns the clips into ``input_features``
  (B, M, F) (M mel bins, F frames) and ``feature_attention_mask`` (B, F), one row per completion since TRL
  repeats every prompt for its G generations (each distinct clip is extracted once and its rows repeated:
  :func:`share_repeated_clips`). It keeps these features for the old-policy and reference forwards of the
  same call; TRL's own code passes them to ``generate``; the batch returned carries them, so TRL's
  shuffle, split into micro-batches and buffer over ``steps_per_generation`` move them with their rows.
- ``_get_per_token_logps_and_entropies``: with audio, TRL's own function per chunk of rows, on the
  model bound to that chunk's features (:class:`_WithAudio`); without, TRL's function unchanged.
  ``_compute_loss`` (wrapped) provides the batch's features for the policy forward. Under FSDP2 the function
  first gathers an LM head that is a sharding unit of its own (:func:`unshard_output_head`), on text batches too.
- ``create_accelerator_and_postprocess`` (public, wrapped): accelerate selects FSDP for GPU launches only; on a
  machine without CUDA an ``accelerate launch --use_fsdp`` run is switched to it (:func:`adrpo.cpu_fsdp.fsdp_on_cpu`),
  as the flow trainer's is, so that the sharded path is tested on CPU processes (tests/test_llm_sharded.py).

On a text-only batch every override is TRL's code path exactly (tests/test_audio.py compares each
with a stock trainer); on an audio batch the per-token log-probs equal a direct forward of the
model. :class:`adrpo.llm.trainer.ADRPOTrainer` derives from this class, so fixed-β GRPO and ADRPO
share the audio path and the per-sample coefficient is unchanged.

Supported: one clip per row, in every row of a dataset, with transformers' ``generate``; clips as
arrays, file paths or ``datasets.Audio`` values (:func:`load_clip`). Refused with a
:class:`adrpo.errors.ConfigError` at ``__init__``: rows of an ``audio`` column without a clip, a processor
without a feature extractor, vLLM (TRL passes vLLM images only: it would need the clips as
``multi_modal_data={"audio": (array, rate)}`` in ``vllm_generation.generate`` and an audio-capable vLLM
model), tools, environments and ``rollout_func`` (they re-render prompts outside this path). Clips that
are multi-channel, empty or unreadable are refused when a batch reads them, naming the batch row and
its id (:mod:`adrpo.prompts` checks every row of a dataset file before training).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.distributed.fsdp import FSDPModule
from trl import GRPOTrainer

from adrpo.cpu_fsdp import fsdp_on_cpu
from adrpo.data.audio_clips import load_clip  # the clip readers live in adrpo.data
from adrpo.errors import ConfigError
from adrpo.llm.audio_datasets import AUDIO_COLUMN, has_audio, readable_audio, rows_without_audio
from adrpo.llm.audio_features import extracting_each_clip_once, share_repeated_clips
from adrpo.llm.base_kl import KLToBase
from adrpo.llm.gathered_generation import GatheredGeneration
from adrpo.llm.resume import ExactResume
from adrpo.llm.trl_deprecations import ignore_trl_checkpointing_deprecations

FEATURE_KEYS = ("input_features", "feature_attention_mask")


def with_audio_part(prompt: list[dict[str, Any]], clip: Any, *, where: str) -> list[dict[str, Any]]:
    """The conversational ``prompt`` with ``clip`` (an array, or any payload) as its audio part (a new list;
    ``prompt`` is unchanged).

    The clip fills the one ``{"type": "audio"}`` part (whatever it held); without one it goes before
    the text of the first user message (TRL's convention for images).

    Raises:
        ConfigError: naming ``where``, if the prompt is not a list of messages, has no user
            message, or has more than one audio part.
    """
    if not isinstance(prompt, list) or not all(isinstance(m, Mapping) and "role" in m for m in prompt):
        raise ConfigError(f"{where}: audio rows need a conversational prompt (a list of {{'role', 'content'}} messages)")
    parts = [(i, j) for i, m in enumerate(prompt) if isinstance(m.get("content"), list)
             for j, part in enumerate(m["content"]) if part.get("type") == "audio"]
    if len(parts) > 1:
        raise ConfigError(f"{where}: the prompt has {len(parts)} audio parts; one clip per row is supported")
    messages = [dict(m) for m in prompt]
    if parts:
        i, j = parts[0]
        content = list(messages[i]["content"])
        content[j] = {"type": "audio", "audio": clip}
        messages[i]["content"] = content
        return messages
    user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if user is None:
        raise ConfigError(f"{where}: the prompt has no user message to attach the audio to")
    content = messages[user]["content"]
    text = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    messages[user]["content"] = [{"type": "audio", "audio": clip}, *text]
    return messages


def _audio_payload(row: Mapping[str, Any], where: str) -> tuple[Any, str] | None:
    """The row's clip and where it sits (``column 'audio'`` or ``the prompt's audio part``): its ``audio`` column,
    else the payload of an audio part of its prompt; None without audio."""
    if row.get(AUDIO_COLUMN) is not None:
        return row[AUDIO_COLUMN], f"column {AUDIO_COLUMN!r}"
    prompt = row.get("prompt")
    if not isinstance(prompt, list):
        return None
    payloads = [part.get("audio") for m in prompt if isinstance(m, Mapping) and isinstance(m.get("content"), list)
                for part in m["content"] if part.get("type") == "audio" and part.get("audio") is not None]
    if len(payloads) > 1:
        raise ConfigError(f"{where}: the prompt has {len(payloads)} audio parts; one clip per row is supported")
    return (payloads[0], "the prompt's audio part") if payloads else None


def audio_reference(payload: Any, clip: np.ndarray, row: Mapping[str, Any], *, sampling_rate: int) -> str:
    """A short text standing for a row's clip where prompts are gathered and logged: its file path if it has one,
    else the row's id, and its duration: ``"<audio: data/a.wav, 1.00 s>"``, ``"<audio: id 'q1', 1.00 s>"``."""
    path = payload.get("path") if isinstance(payload, Mapping) else payload if isinstance(payload, (str, os.PathLike)) else None
    name = str(path) if path else f"id {str(row['id'])!r}" if row.get("id") is not None else None
    seconds = f"{clip.size / sampling_rate:.2f} s"
    return f"<audio: {name}, {seconds}>" if name else f"<audio: {seconds}>"


@contextmanager
def _audio_token_as_image_token(model, args) -> Iterator[None]:
    """For a model config with an audio token but no image token, ``config.image_token_id`` reads the audio
    token's id while the context lasts (a class-level alias, removed on exit)."""
    if isinstance(model, str):
        from transformers import AutoConfig

        trust = bool(getattr(args, "trust_remote_code", False))
        config_cls = type(AutoConfig.from_pretrained(model, trust_remote_code=trust))
    else:
        config_cls = type(model.config)
    probe = config_cls.attribute_map
    if "image_token_id" in probe or "audio_token_id" not in probe or hasattr(config_cls, "image_token_id"):
        yield
        return
    config_cls.attribute_map = {**probe, "image_token_id": probe["audio_token_id"]}
    try:
        yield
    finally:
        config_cls.attribute_map = probe


def _refuse_unsupported(audio_sets: list[str], values: Mapping[str, Any]) -> None:
    """Refuse what the audio path does not support, from GRPOTrainer's arguments ``values``, naming the datasets.

    Raises:
        ConfigError: for vLLM, tools, environments or a ``rollout_func``; or rows without a clip in a dataset with audio.
    """
    for key in audio_sets:
        for name, dataset in (values[key].items() if isinstance(values[key], Mapping) else [(None, values[key])]):
            missing = rows_without_audio(dataset)
            if missing:
                label = key if name is None else f"{key}[{name!r}]"
                rows = ", ".join(f"row {i}" for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                where = "an 'audio' column" if AUDIO_COLUMN in dataset.column_names else "audio parts in its prompts"
                raise ConfigError(f"{label}: no audio in {rows}: every row of a dataset with {where} needs one clip")
    args = values.get("args")
    unsupported = {"use_vllm": bool(getattr(args, "use_vllm", False)), "tools": bool(values.get("tools")),
                   "environment_factory": values.get("environment_factory") is not None, "rollout_func": values.get("rollout_func") is not None}
    if any(unsupported.values()):
        names = [name for name, on in unsupported.items() if on]
        raise ConfigError(f"{' and '.join(audio_sets)} hold audio, which is trained with transformers' generate only; "
                          f"not with {', '.join(names)}")


def unshard_output_head(model: Any) -> None:
    """Under FSDP2, gather ``model``'s LM head if it is a sharding unit of its own; a no-op otherwise.

    accelerate makes the head its own unit when it is not tied to the input embeddings and the final norm is no
    child of the base model (Qwen2-Audio: the norm sits in ``language_model``); TRL's fused LM head
    (``add_fused_lm_head``) reads ``lm_head.weight`` without calling the module, so FSDP2's hooks never run for
    it. A sharded weight is then gathered with ``DTensor.full_tensor()``, whose backward keeps each process's own
    gradient rows, unreduced: on 2 CPU processes, in a step of two micro-batches, the head's gradient was 65 % off
    DDP's while every other one was equal (tests/test_llm_sharded.py). Gathered here first, the weight is a plain
    tensor and its gradient the unsharded one, which FSDP2's end-of-backward callback reduce-scatters like any
    other. The head then stays gathered until that backward, as accelerate's FSDP2 keeps it after a forward anyway.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, FSDPModule):
        head.unshard()


class _WithAudio:
    """``model`` called with the audio features of the rows it scores added to its inputs."""

    def __init__(self, model: torch.nn.Module, features: dict[str, torch.Tensor]):
        self.model = model
        self.features = features

    def __call__(self, **inputs: Any) -> Any:
        return self.model(**inputs, **self.features)


class AudioPath:
    """Mix into a GRPOTrainer subclass (before it in the bases) for the audio path; see the module docstring."""

    _audio_inputs: dict[str, torch.Tensor] | None = None  # the features of the rows being scored
    _batch_clips: list[np.ndarray] | None = None  # the clips of the batch being generated, one per prompt

    def __init__(self, model, *args, **kwargs):
        ignore_trl_checkpointing_deprecations()  # before TRL's __init__, in which peft reads one of them
        bound = inspect.signature(GRPOTrainer.__init__).bind(self, model, *args, **kwargs)
        values = bound.arguments
        for key in ("train_dataset", "eval_dataset"):
            if values.get(key) is not None:
                values[key] = readable_audio(values[key])
        audio_sets = [key for key in ("train_dataset", "eval_dataset") if values.get(key) is not None and has_audio(values[key])]
        if audio_sets:  # on every rank, from the datasets alone, and before TRL starts vLLM
            _refuse_unsupported(audio_sets, values)
        # TRL's __init__ suppresses `model.config.image_token_id` in sampling for every processor-based model;
        # Qwen2-Audio's config has no image token, and a sampled audio token would mismatch the audio features.
        with _audio_token_as_image_token(model, values.get("args")):
            super().__init__(*bound.args[1:], **bound.kwargs)
        if audio_sets and getattr(self.processing_class, "feature_extractor", None) is None:
            raise ConfigError(f"{' and '.join(audio_sets)} hold audio, but the processor {type(self.processing_class).__name__} has no "
                              "feature_extractor: is the model an audio-language model?")
        audio_token = getattr(self.model.config, "audio_token_id", None)
        if audio_token is not None and not self.use_vllm and hasattr(self, "generation_kwargs"):
            suppressed = sorted({*(self.generation_kwargs.get("suppress_tokens") or []), audio_token})
            self.generation_kwargs["suppress_tokens"] = suppressed
            self.generation_config.suppress_tokens = suppressed
        self._audio_checked = bool(audio_sets)

    def create_accelerator_and_postprocess(self) -> None:
        """transformers' Accelerator; without CUDA, an ``accelerate launch --use_fsdp`` run on several processes gets
        FSDP with the launch's plugin (:func:`adrpo.cpu_fsdp.fsdp_on_cpu`; accelerate would give plain DDP over
        gloo), and transformers' ``is_fsdp_enabled``, which it and TRL read to shard the policy and the reference,
        follows. transformers' own checks of FSDP settings made in this method (activation checkpointing given twice,
        ``save_only_model`` with sharded state dicts) are not repeated for such a run. No-op with CUDA."""
        super().create_accelerator_and_postprocess()
        if fsdp_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if AUDIO_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, AUDIO_COLUMN]

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        ignore_trl_checkpointing_deprecations()  # TRL's generation calls them; a no-op unless a caller's filters dropped it
        wheres = [f"batch row {i}" + (f" (id {str(row['id'])!r})" if row.get("id") is not None else "") for i, row in enumerate(inputs)]
        payloads = [_audio_payload(row, where) for row, where in zip(inputs, wheres)]
        if all(p is None for p in payloads):
            return super()._generate_and_score_completions(inputs)
        missing = [where for where, p in zip(wheres, payloads) if p is None]
        if missing or not self._audio_checked:
            # only batches that are not rows of the trainer's datasets get here: those are checked at __init__
            problem = f"{', '.join(missing[:5])} of an audio batch have no audio" if missing else \
                f"{wheres[0]}: audio rows, but the trainer's datasets had none when it was built (in an 'audio' column or a prompt's audio part)"
            raise ConfigError(f"{problem}: every row needs one clip, so that the trainer checks its datasets at __init__")
        rate = self.processing_class.feature_extractor.sampling_rate
        clips = share_repeated_clips([load_clip(value, sampling_rate=rate, where=f"{where}, {source}")
                                      for (value, source), where in zip(payloads, wheres)])
        # the prompts TRL copies, gathers from every rank and logs hold a short reference; _tokenize_prompts puts the clips back
        rows = [{**row, "prompt": with_audio_part(row["prompt"], audio_reference(value, clip, row, sampling_rate=rate), where=where)}
                for row, (value, _), clip, where in zip(inputs, payloads, clips, wheres)]
        self._batch_clips = clips
        try:
            with extracting_each_clip_once(self.processing_class):
                output = super()._generate_and_score_completions(rows)
            if self._audio_inputs is None:
                raise RuntimeError("the processor returned no input_features for an audio batch: TRL's prompt rendering has changed")
            output.update(self._audio_inputs)
        finally:
            self._audio_inputs = None
            self._batch_clips = None
        return output

    def _tokenize_prompts(self, prompts: list):
        clips = self._batch_clips
        if clips is not None:
            if len(prompts) != len(clips):
                raise RuntimeError(f"{len(prompts)} prompts to render for the {len(clips)} clips of the batch: TRL's generation has changed")
            prompts = [with_audio_part(prompt, clip, where=f"batch row {i}") for i, (prompt, clip) in enumerate(zip(prompts, clips))]
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        if "input_features" in fields:
            device = self.accelerator.device
            self._audio_inputs = {key: torch.as_tensor(np.asarray(fields[key])).to(device) for key in FEATURE_KEYS}
        return prompt_ids, images, fields

    def _compute_loss(self, model, inputs):
        if "input_features" not in inputs:
            return super()._compute_loss(model, inputs)
        with self._scoring_audio({key: inputs[key] for key in FEATURE_KEYS}):
            return super()._compute_loss(model, inputs)

    @contextmanager
    def _scoring_audio(self, features: dict[str, torch.Tensor]) -> Iterator[None]:
        self._audio_inputs = features
        try:
            yield
        finally:
            self._audio_inputs = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        """TRL's function; with audio, applied per chunk of ``batch_size`` rows to the model bound to the chunk's
        features. ``input_ids`` (B, P + C); returns log-probs (B, C), entropies (B, C) or None, aux loss or None."""
        unshard_output_head(model)
        features = self._audio_inputs
        if features is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss, **multimodal)
        given = sorted(k for k, v in multimodal.items() if v is not None)
        if given:
            raise ConfigError(f"audio batches cannot carry image inputs as well ({', '.join(given)})")
        rows = input_ids.size(0)
        if any(v.size(0) != rows for v in features.values()):
            raise RuntimeError(f"audio features for {features['input_features'].size(0)} rows, but {rows} sequences to score")
        batch_size = batch_size or rows
        chunks = []
        for start in range(0, rows, batch_size):
            end = min(start + batch_size, rows)
            bound = _WithAudio(model, {key: value[start:end] for key, value in features.items()})
            chunks.append(super()._get_per_token_logps_and_entropies(
                bound, input_ids[start:end], attention_mask[start:end], logits_to_keep,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss))
        logps = torch.cat([c[0] for c in chunks])
        entropies = torch.cat([c[1] for c in chunks]) if compute_entropy else None
        aux_loss = torch.stack([c[2] for c in chunks]).mean() if compute_aux_loss else None
        return logps, entropies, aux_loss


class AudioGRPOTrainer(KLToBase, AudioPath, ExactResume, GatheredGeneration, GRPOTrainer):
    """GRPOTrainer that also trains audio-language models on rows with an ``audio`` column (:class:`AudioPath`).

    Takes exactly GRPOTrainer's arguments; the processor (``processing_class``, by default the model's
    ``AutoProcessor``) must have a ``feature_extractor``. A run of fixed-β GRPO (``trainer: grpo``) resumes exactly
    (:class:`adrpo.llm.resume.ExactResume`) and with ``sync_ref_model`` logs ``kl_base``
    (:class:`adrpo.llm.base_kl.KLToBase`, before the audio path so that it scores the base on the audio rows too).
    Under FSDP2 ``ds3_gather_for_generation`` gathers the weights once per generation call, as under ZeRO-3
    (:class:`adrpo.llm.gathered_generation.GatheredGeneration`).
    """
