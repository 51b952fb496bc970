"""Feature extraction of an audio batch, each distinct clip once: TRL repeats every prompt for its G
generations, so a batch holds each clip G times; :func:`share_repeated_clips` makes the copies one object and
:class:`OncePerClip` extracts each object once and repeats its rows, bit for bit the features of extracting
every copy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


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
