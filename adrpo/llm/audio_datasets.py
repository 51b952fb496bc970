"""Which rows of a ``datasets.Dataset`` hold audio, read from Arrow columns without decoding a clip, and the
dataset's ``audio`` column put in the forms :func:`adrpo.data.audio_clips.load_clip` reads fast.

:class:`adrpo.llm.audio.AudioGRPOTrainer` checks its datasets with these at ``__init__``, on every rank: a row
holds audio in an ``audio`` column or as the payload of an audio part of its conversational ``prompt``
(``{"type": "audio", "audio": payload}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

AUDIO_COLUMN = "audio"


def has_audio(dataset: Any) -> bool:
    """Whether ``dataset`` (a ``datasets`` dataset, or a mapping of them) has an ``audio`` column, or a row with an
    audio part in its prompt."""
    if isinstance(dataset, Mapping):
        return any(has_audio(d) for d in dataset.values())
    if AUDIO_COLUMN in (getattr(dataset, "column_names", None) or []):
        return True
    flags = prompt_audio_flags(dataset)
    return flags is not None and bool(flags.any())


def rows_without_audio(dataset: Any) -> list[int]:
    """The 0-based indices of the rows of ``dataset`` (a ``datasets.Dataset``) without a clip: a null ``audio``
    column, or, without that column, no audio part in a prompt while other rows' prompts have one; [] otherwise.
    Reads the column's null flags or the prompts' part types only, batch by batch."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        return []
    if AUDIO_COLUMN not in dataset.column_names:
        flags = prompt_audio_flags(dataset)
        return [] if flags is None or not flags.any() else np.flatnonzero(~flags).tolist()
    missing, start = [], 0
    for batch in dataset.select_columns([AUDIO_COLUMN]).with_format("arrow").iter(batch_size=1024):
        nulls = batch.column(AUDIO_COLUMN).is_null().to_numpy(zero_copy_only=False)
        missing.extend((start + np.flatnonzero(nulls)).tolist())
        start += len(nulls)
    return missing


def prompt_audio_flags(dataset: Any) -> np.ndarray | None:
    """Per row of ``dataset`` (a ``datasets.Dataset``), whether its ``prompt`` messages hold an audio part with a
    payload (bool, (N,)); None when no prompt can (not a Dataset, no ``prompt`` column of messages whose content
    parts have an ``audio`` field). Reads the Arrow columns of the parts' types and payload null flags, not the
    payloads, so every row is checked at __init__ on every rank."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or "prompt" not in dataset.column_names:
        return None
    prompts = dataset.select_columns(["prompt"]).with_format("arrow")
    messages = prompts[:0].column("prompt").type
    if not (pa.types.is_list(messages) and pa.types.is_struct(messages.value_type)
            and messages.value_type.get_field_index("content") >= 0):
        return None
    parts = messages.value_type.field("content").type
    if not (pa.types.is_list(parts) and pa.types.is_struct(parts.value_type) and
            {"type", "audio"} <= {field.name for field in parts.value_type}):
        return None
    flags, start = np.zeros(len(dataset), dtype=bool), 0
    for batch in prompts.iter(batch_size=1024):
        column = batch.column("prompt").combine_chunks()  # list<struct<role, content: list<struct<type, audio, ...>>>>
        message_row = pc.list_parent_indices(column).to_numpy()  # (messages,) -> row in batch
        contents = pc.list_flatten(column).field("content")
        part_message = pc.list_parent_indices(contents).to_numpy()  # (parts,) -> message
        flat = pc.list_flatten(contents)
        audio = pc.and_(pc.equal(flat.field("type"), "audio"), pc.is_valid(flat.field("audio"))).fill_null(False)
        flags[start + message_row[part_message[audio.to_numpy(zero_copy_only=False)]]] = True
        start += len(column)
    return flags


def readable_audio(dataset: Any) -> Any:
    """``dataset`` with its ``audio`` column in the forms :func:`adrpo.data.audio_clips.load_clip` reads fast, with the locked packages:

    - ``datasets.Audio`` (every hub audio dataset) cast to ``Audio(decode=False)``: rows ``{"bytes", "path"}``,
      decoded by soundfile in :func:`adrpo.data.audio_clips.load_clip` (decoding with datasets needs torchcodec, whose PyPI wheels do not
      load with the CPU build of torch);
    - plain lists of samples (a ``datasets.Dataset`` without a format) given out as numpy arrays, since
      accelerate would walk a list sample by sample.

    Anything else is returned unchanged; a mapping of datasets (TRL's several eval sets) is handled per entry."""
    from datasets import Audio, Dataset

    if isinstance(dataset, Mapping):
        return {name: readable_audio(d) for name, d in dataset.items()}
    if not isinstance(dataset, Dataset) or AUDIO_COLUMN not in dataset.column_names:
        return dataset
    feature = dataset.features[AUDIO_COLUMN]
    if isinstance(feature, Audio):
        return dataset if not feature.decode else dataset.cast_column(AUDIO_COLUMN, Audio(decode=False))
    if dataset.format["type"] is None and getattr(getattr(feature, "feature", None), "dtype", "").startswith(("float", "int")):
        return dataset.with_format("numpy", columns=[AUDIO_COLUMN], output_all_columns=True)
    return dataset
