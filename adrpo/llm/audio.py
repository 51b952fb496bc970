"""Audio-language models (Qwen2-Audio, the Qwen2.5-Omni thinker) on TRL's GRPOTrainer.

TRL 1.16's GRPOTrainer knows images only: it keeps the ``image``/``images`` columns, and passes
a fixed list of image arguments to its log-prob forward. :class:`AudioGRPOTrainer` adds audio
with small overrides and leaves every other part (sampling, rewards, advantages, the loss
types, buffering, DDP/DeepSpeed) to TRL:

- ``__init__`` (wrapped): audio columns stored as lists of samples are read as numpy arrays
  (:func:`numpy_audio`; accelerate would walk a list sample by sample), and the model's audio token
  is never sampled (TRL suppresses the image token only, and reads ``config.image_token_id``, which
  Qwen2-Audio's config lacks, so it reads the audio token's id while TRL's ``__init__`` runs).

- ``_set_signature_columns_if_needed``: the ``audio`` column survives ``remove_unused_columns``.
- ``_generate_and_score_completions`` (wrapped): each row's clip is read (:func:`load_clip`) and
  put into its conversational prompt as an audio part (:func:`with_audio_part`). TRL renders the
  prompts with the model's processor, whose feature extractor turns the clips into
  ``input_features`` (B, M, F) (M mel bins, F frames) and ``feature_attention_mask`` (B, F), one
  row per completion since TRL repeats every prompt for its G generations (each distinct clip is
  extracted once and its rows repeated: :func:`share_repeated_clips`). TRL's own code passes
  them to ``generate``; the batch returned carries them, so TRL's shuffle, split into
  micro-batches and buffer over ``steps_per_generation`` move them with their rows.
- ``_tokenize_prompts`` (wrapped): keeps the features the processor made, for the old-policy and
  reference forwards of the same call.
- ``_get_per_token_logps_and_entropies``: with audio, TRL's own function per chunk of rows, on the
  model bound to that chunk's features (:class:`_WithAudio`); without, TRL's function unchanged.
  ``_compute_loss`` (wrapped) provides the batch's features for the policy forward.

On a text-only batch every override is TRL's code path exactly (tests/test_audio.py compares each
with the stock trainer); on an audio batch the per-token log-probs equal a direct forward of the
model. :class:`adrpo.llm.trainer.ADRPOTrainer` derives from this class, so fixed-β GRPO and ADRPO
share the audio path and the per-sample coefficient is unchanged.

Supported: one clip per row, in every row of a batch, with transformers' ``generate``. Refused with
a :class:`adrpo.errors.ConfigError`: vLLM (TRL passes vLLM images only: it would need the clips as
``multi_modal_data={"audio": (array, rate)}`` in ``vllm_generation.generate`` and an audio-capable
vLLM model), tools, environments and ``rollout_func`` (they re-render prompts outside this path).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

from adrpo.errors import ConfigError

AUDIO_COLUMN = "audio"
FEATURE_KEYS = ("input_features", "feature_attention_mask")


def load_clip(value: Any, *, sampling_rate: int, where: str) -> np.ndarray:
    """A mono clip as a (S,) float32 array of samples at ``sampling_rate``.

    ``value`` is a sequence of samples (already at ``sampling_rate``), a path to an audio file
    (read with soundfile), or a ``datasets.Audio`` mapping with ``array`` and ``sampling_rate``,
    or with ``path``. Clips are never resampled: another rate is refused.

    Raises:
        ConfigError: naming ``where`` (the row), for an unreadable file, another sampling rate,
            more than one channel or an empty clip.
    """
    rate = sampling_rate
    if isinstance(value, Mapping):
        if value.get("array") is not None:
            value, rate = value["array"], value.get("sampling_rate", sampling_rate)
        elif value.get("path"):
            value = value["path"]
        else:
            raise ConfigError(f"{where}: an audio mapping needs 'array' (and 'sampling_rate') or 'path', got keys {sorted(value)}")
    if isinstance(value, str):
        value, rate = _read_audio_file(value, where)
    clip = np.asarray(value, dtype=np.float32)
    if clip.ndim == 2 and 1 in clip.shape:
        clip = clip.reshape(-1)
    if clip.ndim != 1 or clip.size == 0:
        raise ConfigError(f"{where}: audio must be one non-empty mono channel, got an array of shape {clip.shape}")
    if rate != sampling_rate:
        raise ConfigError(f"{where}: audio sampled at {rate} Hz, but the model's feature extractor expects {sampling_rate} Hz; resample it first")
    return clip


def _read_audio_file(path: str, where: str) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as err:
        raise ConfigError(f"{where}: reading audio files needs soundfile: pip install 'adrpo[audio]'") from err
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (S, channels)
    except (OSError, RuntimeError) as err:  # soundfile raises LibsndfileError, a RuntimeError
        raise ConfigError(f"{where}: cannot read audio file {path!r} ({err})") from err
    if samples.shape[1] != 1:
        raise ConfigError(f"{where}: audio file {path!r} has {samples.shape[1]} channels; mono audio is expected")
    return samples[:, 0], rate


def with_audio_part(prompt: list[dict[str, Any]], clip: np.ndarray, *, where: str) -> list[dict[str, Any]]:
    """The conversational ``prompt`` with ``clip`` as its audio part (a new list; ``prompt`` is unchanged).

    The clip fills the one ``{"type": "audio"}`` placeholder; without a placeholder it goes before
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


def share_repeated_clips(clips: list[np.ndarray]) -> list[np.ndarray]:
    """``clips`` with every clip equal to the one before it replaced by that same array object.

    TRL repeats each prompt for its G generations, one after another, so a batch holds each clip G
    times as separate but equal arrays; made one object, it is extracted once
    (:class:`OncePerClip`).
    """
    shared: list[np.ndarray] = []
    for clip in clips:
        previous = shared[-1] if shared else None
        same = previous is not None and previous.shape == clip.shape and np.array_equal(previous, clip)
        shared.append(previous if same else clip)
    return shared


class OncePerClip:
    """A feature extractor that runs once per distinct clip object of a batch and repeats the rows.

    transformers' audio feature extractors compute each clip's features from that clip alone; the
    one batch-wide choice, the padded length, is the extractor's fixed window for Qwen2-Audio's and
    the Omni thinker's processors (``padding="max_length"``) and otherwise the longest clip's, which
    the distinct clips include. So the repeated rows are bit for bit those of extracting every copy
    (``tests/test_audio.py``); ``benchmarks/audio_features.py`` times the saving. Every other
    attribute is the wrapped extractor's.
    """

    def __init__(self, extractor: Any):
        self._extractor = extractor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._extractor, name)

    def __call__(self, audio: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(audio, (list, tuple)):
            return self._extractor(audio, *args, **kwargs)
        positions: dict[int, int] = {}  # id(clip) -> its row among the distinct clips
        inverse = [positions.setdefault(id(clip), len(positions)) for clip in audio]
        if len(positions) == len(audio):
            return self._extractor(audio, *args, **kwargs)
        distinct = list({id(clip): clip for clip in audio}.values())  # first occurrences, in order
        features = self._extractor(distinct, *args, **kwargs)
        for key, value in features.items():
            features[key] = _repeat_rows(value, inverse, len(distinct), key)
        return features


def _repeat_rows(value: Any, inverse: list[int], rows: int, key: str) -> Any:
    """Rows ``inverse`` of ``value`` (U, ...) as a tensor, array or list like it: (len(inverse), ...)."""
    if len(value) != rows:
        raise RuntimeError(f"the feature extractor's {key!r} has {len(value)} rows for {rows} clips")
    if isinstance(value, torch.Tensor):
        return value[torch.tensor(inverse, device=value.device)]
    if isinstance(value, np.ndarray):
        return value[np.asarray(inverse)]
    return [value[i] for i in inverse]


@contextmanager
def extracting_each_clip_once(processor: Any) -> Iterator[None]:
    """Within the block, ``processor.feature_extractor`` is :class:`OncePerClip` over itself."""
    extractor = processor.feature_extractor
    processor.feature_extractor = OncePerClip(extractor)
    try:
        yield
    finally:
        processor.feature_extractor = extractor


def _audio_payload(row: Mapping[str, Any], where: str) -> Any | None:
    """The row's clip: its ``audio`` column, else the payload of an audio part of its prompt; None without audio."""
    if row.get(AUDIO_COLUMN) is not None:
        return row[AUDIO_COLUMN]
    prompt = row.get("prompt")
    if not isinstance(prompt, list):
        return None
    payloads = [part.get("audio") for m in prompt if isinstance(m, Mapping) and isinstance(m.get("content"), list)
                for part in m["content"] if part.get("type") == "audio" and part.get("audio") is not None]
    if len(payloads) > 1:
        raise ConfigError(f"{where}: the prompt has {len(payloads)} audio parts; one clip per row is supported")
    return payloads[0] if payloads else None


def numpy_audio(dataset: Any) -> Any:
    """``dataset`` with its ``audio`` column read as numpy arrays when it stores plain lists of samples (a
    ``datasets.Dataset`` without a format); anything else unchanged (``datasets.Audio`` columns decode to
    arrays already). A mapping of datasets (TRL's several eval sets) is handled per entry."""
    from datasets import Dataset

    if isinstance(dataset, Mapping):
        return {name: numpy_audio(d) for name, d in dataset.items()}
    if not isinstance(dataset, Dataset) or AUDIO_COLUMN not in dataset.column_names or dataset.format["type"] is not None:
        return dataset
    feature = dataset.features[AUDIO_COLUMN]
    if getattr(getattr(feature, "feature", None), "dtype", "").startswith(("float", "int")):
        return dataset.with_format("numpy", columns=[AUDIO_COLUMN], output_all_columns=True)
    return dataset


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


class _WithAudio:
    """``model`` called with the audio features of the rows it scores added to its inputs."""

    def __init__(self, model: torch.nn.Module, features: dict[str, torch.Tensor]):
        self.model = model
        self.features = features

    def __call__(self, **inputs: Any) -> Any:
        return self.model(**inputs, **self.features)


class AudioGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that also trains audio-language models on rows with an ``audio`` column.

    Takes exactly GRPOTrainer's arguments; the processor (``processing_class``, by default the
    model's ``AutoProcessor``) must have a ``feature_extractor``. See the module docstring.
    """

    _audio_inputs: dict[str, torch.Tensor] | None = None  # the features of the rows being scored

    def __init__(self, model, *args, **kwargs):
        # datasets hands array columns out as Python lists, which accelerate then walks float by float when it moves
        # each batch to the device (39 of 46 s of a CPU miniature run): give the audio column out as numpy arrays
        args = tuple(numpy_audio(a) if i in (2, 3) else a for i, a in enumerate(args))  # train_dataset, eval_dataset
        kwargs = {k: numpy_audio(v) if k in ("train_dataset", "eval_dataset") else v for k, v in kwargs.items()}
        # TRL's __init__ suppresses `model.config.image_token_id` in sampling for every processor-based model;
        # Qwen2-Audio's config has no image token, and a sampled audio token would mismatch the audio features.
        with _audio_token_as_image_token(model, kwargs.get("args") or (args[1] if len(args) > 1 else None)):
            super().__init__(model, *args, **kwargs)
        audio_token = getattr(self.model.config, "audio_token_id", None)
        if audio_token is not None and not self.use_vllm and hasattr(self, "generation_kwargs"):
            suppressed = sorted({*(self.generation_kwargs.get("suppress_tokens") or []), audio_token})
            self.generation_kwargs["suppress_tokens"] = suppressed
            self.generation_config.suppress_tokens = suppressed

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if AUDIO_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, AUDIO_COLUMN]

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        payloads = [_audio_payload(row, f"row {i}") for i, row in enumerate(inputs)]
        if all(p is None for p in payloads):
            return super()._generate_and_score_completions(inputs)
        self._check_audio_supported(payloads)
        rate = self.processing_class.feature_extractor.sampling_rate
        wheres = [f"row {i}" + (f" (id {row['id']!r})" if "id" in row else "") for i, row in enumerate(inputs)]
        clips = share_repeated_clips([load_clip(payload, sampling_rate=rate, where=where) for payload, where in zip(payloads, wheres)])
        rows = [{**row, "prompt": with_audio_part(row["prompt"], clip, where=where)} for row, clip, where in zip(inputs, clips, wheres)]
        try:
            with extracting_each_clip_once(self.processing_class):
                output = super()._generate_and_score_completions(rows)
            if self._audio_inputs is None:
                raise RuntimeError("the processor returned no input_features for an audio batch: TRL's prompt rendering has changed")
            output.update(self._audio_inputs)
        finally:
            self._audio_inputs = None
        return output

    def _check_audio_supported(self, payloads: list[Any]) -> None:
        missing = [i for i, p in enumerate(payloads) if p is None]
        if missing:
            raise ConfigError(f"rows {missing[:5]} of an audio batch have no audio: every row needs one clip (column 'audio' or an audio part)")
        if getattr(self.processing_class, "feature_extractor", None) is None:
            raise ConfigError(f"audio rows, but the processor {type(self.processing_class).__name__} has no feature_extractor: "
                              "is the model an audio-language model?")
        args = self.args
        unsupported = {"use_vllm": args.use_vllm, "tools": bool(self.tools), "environment_factory": self.environment_factories is not None,
                       "rollout_func": self.rollout_func is not None}
        if any(unsupported.values()):
            names = [name for name, on in unsupported.items() if on]
            raise ConfigError(f"audio rows are trained with transformers' generate only; not with {', '.join(names)}")

    def _tokenize_prompts(self, prompts: list):
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
