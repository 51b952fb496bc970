"""Prompt datasets from local files or the datasets hub, shared by the GRPO recipe and the
text-to-image task.

    {path: prompts.jsonl}                                   # or .json / .csv, with a ``prompt`` column
    {path: drawbench.csv, prompt_column: Prompts}           # rename the column that holds the prompts
    {name: a/dataset, config: null, split: train, prompt_column: text}
    {path: vqa.jsonl, image_column: file}                   # image paths -> PIL images in the ``image`` column
    {path: aqa.jsonl, audio_column: wav}                    # audio paths -> the ``audio`` column
    {format: avqa, path: avqa-train.jsonl}                  # AVQA-style / MMAU-format audio QA files
    {format: mmau, path: mmau-test-mini.json}               #   (adrpo.data.mmau), audio column included

Media columns (``image_column``, ``audio_column``) hold file paths, relative to the data file's folder
or absolute, and every file must exist; or, from the hub, ``datasets.Image`` / ``Audio`` values, kept
as they are. With a media column, string prompts become one user message, since TRL and
:class:`adrpo.llm.audio.AudioGRPOTrainer` put images and audio into conversational prompts only.
Images are decoded by ``datasets.Image`` when a row is read; audio paths stay paths, read with
soundfile by the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adrpo.errors import ConfigError

MEDIA_COLUMNS = {"image_column": "image", "audio_column": "audio"}
QA_FORMATS = ("avqa", "mmau")


def load_prompt_dataset(spec: dict[str, Any], *, field: str = "dataset"):
    """A ``datasets.Dataset`` from ``{path: FILE.jsonl|.json|.csv}``, ``{name, config?, split?}`` or
    ``{format: avqa|mmau, path}`` (see the module docstring).

    ``prompt_column`` / ``answer_column`` rename a dataset's columns to ``prompt`` / ``answer``
    (e.g. GSM8K's ``question`` and ``answer``); ``image_column`` / ``audio_column`` to ``image`` /
    ``audio``. Errors name ``field``, the config key of the spec, and for a missing media file its row.
    """
    from datasets import Dataset, load_dataset

    if "format" in spec:
        return Dataset.from_list(_qa_rows(spec, field))
    if "path" in spec:
        path = Path(spec["path"])
        kinds = {".jsonl": "json", ".json": "json", ".csv": "csv"}
        if path.suffix not in kinds:
            raise ConfigError(f"{field}.path {str(path)!r}: expected a .jsonl, .json or .csv file")
        if not path.exists():
            raise ConfigError(f"{field}.path {str(path)!r} does not exist")
        dataset = load_dataset(kinds[path.suffix], data_files=str(path), split="train")
        folder = path.parent
    elif "name" in spec:
        dataset = load_dataset(spec["name"], spec.get("config"), split=spec.get("split", "train"))
        folder = Path.cwd()
    else:
        raise ConfigError(f"{field} needs 'path' (a local file), 'name' (a datasets id) or 'format' ({' or '.join(QA_FORMATS)})")
    keys = {"prompt_column": "prompt", "answer_column": "answer", **MEDIA_COLUMNS}
    renames = {spec[key]: target for key, target in keys.items() if key in spec}
    missing = sorted(set(renames) - set(dataset.column_names))
    if missing:
        raise ConfigError(f"{field} has no column(s) {missing}; columns: {dataset.column_names}")
    dataset = dataset.rename_columns({old: new for old, new in renames.items() if old != new})
    if "prompt" not in dataset.column_names:
        raise ConfigError(f"{field} has no 'prompt' column (set {field}.prompt_column); columns: {dataset.column_names}")
    media = [MEDIA_COLUMNS[key] for key in MEDIA_COLUMNS if key in spec]
    return _with_media(dataset, media, folder, field) if media else dataset


def _qa_rows(spec: dict[str, Any], field: str) -> list[dict[str, Any]]:
    from adrpo.data.mmau import load_avqa, load_mmau

    if spec["format"] not in QA_FORMATS:
        raise ConfigError(f"{field}.format must be one of {list(QA_FORMATS)}, got {spec['format']!r}")
    if "path" not in spec:
        raise ConfigError(f"{field} with format {spec['format']!r} needs 'path'")
    rows = (load_avqa if spec["format"] == "avqa" else load_mmau)(spec["path"])
    return [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]


def _with_media(dataset, columns: list[str], folder: Path, field: str):
    """``columns`` of file paths resolved against ``folder`` and checked; images decoded on access;
    string prompts turned into one user message."""
    from datasets import Audio, Image

    paths = []  # the columns of file paths; datasets' own Image / Audio columns decode themselves
    for column in columns:
        feature = dataset.features[column]
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            paths.append(column)
        elif not isinstance(feature, (Image, Audio)):
            raise ConfigError(f"{field}: the {column} column must hold file paths or datasets Image/Audio values, got {feature}")

    def resolve(row: dict[str, Any], index: int) -> dict[str, Any]:
        for column in paths:
            value = row[column]
            if not isinstance(value, str):
                raise ConfigError(f"{field}: row {index}: {column!r} must be a file path, got {type(value).__name__}")
            path = Path(value) if Path(value).is_absolute() else folder / value
            if not path.exists():
                raise ConfigError(f"{field}: row {index}: {column} file {str(path)!r} does not exist")
            row[column] = str(path)
        if isinstance(row["prompt"], str):
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
        return row

    dataset = dataset.map(resolve, with_indices=True)
    return dataset.cast_column("image", Image()) if "image" in paths else dataset
