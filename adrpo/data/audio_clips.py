"""Audio clips as a dataset row brings them: arrays, files, and the hub's ``datasets.Audio`` values, decoded
or not. :func:`load_clip` reads one into a mono float32 array at the model's sampling rate (resampling when
needed); :func:`audio_problem` says, from a file's header where it can, why a clip cannot be trained on, so
that a dataset is checked before training (:mod:`adrpo.prompts`). Every error names its row and column.

numpy, soundfile (files and bytes) and scipy (resampling) only; the trainers import it, not the reverse.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adrpo.errors import ConfigError


def load_clip(value: Any, *, sampling_rate: int, where: str) -> np.ndarray:
    """A mono clip as a (S,) float32 array of samples at ``sampling_rate``.

    ``value`` is one of:

    - a sequence or array of samples, taken to be at ``sampling_rate`` already;
    - a path (``str`` or ``os.PathLike``) to an audio file, read with soundfile;
    - a ``datasets.Audio`` value: a mapping with ``array`` and ``sampling_rate``; an undecoded row
      (``Audio(decode=False)``, how :func:`readable_audio` gives hub columns out) ``{"bytes", "path"}``,
      read from the bytes when present, else from the path; or a decoded object that is not a mapping but
      is indexable by ``"array"`` and ``"sampling_rate"`` (datasets' torchcodec ``AudioDecoder``, recognised
      by those keys, not by its class; its ``metadata.num_channels``, when it has one, is checked too, since
      its ``"array"`` is the mean of the channels).

    A clip at another rate is resampled to ``sampling_rate`` (:func:`resample`).

    Raises:
        ConfigError: naming ``where`` (the row and column), for an unreadable file, more than one channel,
            an empty clip or a sampling rate that is not a positive integer.
    """
    clip, rate = _mono_clip(value, sampling_rate, where)
    return clip if rate == sampling_rate else resample(clip, from_rate=rate, to_rate=sampling_rate)


def _mono_clip(value: Any, rate: int, where: str) -> tuple[np.ndarray, int]:
    """The (S,) float32 samples of ``value`` and their rate (``rate`` when ``value`` does not say), checked."""
    samples, rate = _samples_and_rate(value, rate, where)
    clip = np.asarray(samples, dtype=np.float32)
    if clip.ndim == 2 and 1 in clip.shape:
        clip = clip.reshape(-1)
    if clip.ndim != 1 or clip.size == 0:
        raise ConfigError(f"{where}: audio must be one non-empty mono channel, got an array of shape {clip.shape}")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ConfigError(f"{where}: the audio's sampling rate must be a positive integer, got {rate!r}")
    return clip, int(rate)


def resample(clip: np.ndarray, *, from_rate: int, to_rate: int) -> np.ndarray:
    """``clip`` (S,) resampled from ``from_rate`` to ``to_rate`` Hz: (ceil(S · to_rate / from_rate),) float32.

    Polyphase filtering (``scipy.signal.resample_poly`` with its default Kaiser-windowed anti-aliasing
    filter) by the reduced ratio ``to_rate / from_rate``: 22050 -> 16000 Hz is up 320, down 441.
    """
    from scipy.signal import resample_poly

    common = math.gcd(from_rate, to_rate)
    return resample_poly(clip, to_rate // common, from_rate // common).astype(np.float32)


def audio_problem(value: Any) -> str | None:
    """Why the clip ``value`` (any form :func:`load_clip` takes) cannot be trained on, or None if it can.

    Files and bytes are judged from their header (``soundfile.info``: readable, one channel, at least one
    frame) without decoding them; arrays by their shape; decoded objects by their ``"array"``. The
    sampling rate is no problem: :func:`load_clip` resamples.
    """
    if isinstance(value, Mapping) and value.get("array") is None:
        if value.get("bytes"):
            return _header_problem(io.BytesIO(value["bytes"]), value.get("path") or "<bytes>")
        if value.get("path"):
            value = value["path"]
        else:
            return f"an audio mapping needs 'array', 'bytes' or 'path', got keys {sorted(value)}"
    if isinstance(value, (str, os.PathLike)):
        if not Path(value).is_file():
            return f"audio file {str(value)!r} does not exist"
        return _header_problem(value, str(value))
    try:
        _mono_clip(value, 1, "")
    except ConfigError as err:
        return str(err).removeprefix(": ")
    return None


def _header_problem(source: Any, name: str) -> str | None:
    soundfile = _soundfile(name)
    try:
        info = soundfile.info(source)
    except (OSError, RuntimeError) as err:  # soundfile raises LibsndfileError, a RuntimeError
        return f"cannot read audio {name!r} ({err})"
    if info.channels != 1:
        return f"audio {name!r} has {info.channels} channels; mono audio is expected"
    if info.frames == 0:
        return f"audio {name!r} is empty (0 samples)"
    return None


def _samples_and_rate(value: Any, rate: int, where: str) -> tuple[Any, Any]:
    """The samples of ``value`` (an array-like, (S,) for mono) and their rate (``rate`` when not given)."""
    if isinstance(value, (str, os.PathLike)):
        return _read_audio(value, str(value), where)
    if isinstance(value, Mapping):
        if value.get("array") is not None:
            return value["array"], rate if value.get("sampling_rate") is None else value["sampling_rate"]
        if value.get("bytes"):
            return _read_audio(io.BytesIO(value["bytes"]), value.get("path") or "<bytes>", where)
        if value.get("path"):
            return _read_audio(value["path"], value["path"], where)
        raise ConfigError(f"{where}: an audio mapping needs 'array' (and 'sampling_rate'), 'bytes' or 'path', got keys {sorted(value)}")
    decoded = _decoded(value)
    if decoded is None:
        return value, rate
    channels = getattr(getattr(value, "metadata", None), "num_channels", None)
    if isinstance(channels, int) and channels != 1:
        raise ConfigError(f"{where}: the decoded audio has {channels} channels; mono audio is expected")
    return decoded


def _decoded(value: Any) -> tuple[Any, Any] | None:
    """``(value["array"], value["sampling_rate"])`` for a decoded audio object that is not a mapping; None otherwise."""
    if isinstance(value, (np.ndarray, torch.Tensor, list, tuple, bytes, bytearray)) or not hasattr(value, "__getitem__"):
        return None
    try:
        return value["array"], value["sampling_rate"]
    except (KeyError, TypeError, IndexError, ValueError):
        return None


def _soundfile(name: str) -> Any:
    try:
        import soundfile
    except ImportError as err:
        raise ConfigError(f"reading audio {name!r} needs soundfile: pip install 'adrpo[audio]'") from err
    return soundfile


def _read_audio(source: Any, name: str, where: str) -> tuple[np.ndarray, int]:
    """The (S,) samples of a mono audio file (a path or a file object) and its rate."""
    soundfile = _soundfile(name)
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)  # (S, channels)
    except (OSError, RuntimeError) as err:  # soundfile raises LibsndfileError, a RuntimeError
        raise ConfigError(f"{where}: cannot read audio file {name!r} ({err})") from err
    if samples.shape[1] != 1:
        raise ConfigError(f"{where}: audio file {name!r} has {samples.shape[1]} channels; mono audio is expected")
    return samples[:, 0], rate
