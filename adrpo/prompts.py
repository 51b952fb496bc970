"""Prompt datasets from local files or the datasets hub, shared by the GRPO recipe and the
text-to-image task.

    {path: prompts.jsonl}                                   # or .json / .csv, with a ``prompt`` column
    {path: drawbench.csv, prompt_column: Prompts}           # rename the column that holds the prompts
    {name: a/dataset, config: null, split: train, prompt_column: text}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adrpo.errors import ConfigError


def load_prompt_dataset(spec: dict[str, Any], *, field: str = "dataset"):
    """A ``datasets.Dataset`` from ``{path: FILE.jsonl|.csv}`` or ``{name, config?, split?}``.

    ``prompt_column`` / ``answer_column`` rename a dataset's columns to ``prompt`` / ``answer``
    (e.g. GSM8K's ``question`` and ``answer``). Errors name ``field``, the config key of the spec.
    """
    from datasets import load_dataset

    if "path" in spec:
        path = Path(spec["path"])
        kinds = {".jsonl": "json", ".json": "json", ".csv": "csv"}
        if path.suffix not in kinds:
            raise ConfigError(f"{field}.path {str(path)!r}: expected a .jsonl, .json or .csv file")
        if not path.exists():
            raise ConfigError(f"{field}.path {str(path)!r} does not exist")
        dataset = load_dataset(kinds[path.suffix], data_files=str(path), split="train")
    elif "name" in spec:
        dataset = load_dataset(spec["name"], spec.get("config"), split=spec.get("split", "train"))
    else:
        raise ConfigError(f"{field} needs 'path' (a local file) or 'name' (a datasets id)")
    renames = {spec[key]: target for key, target in (("prompt_column", "prompt"), ("answer_column", "answer")) if key in spec}
    missing = sorted(set(renames) - set(dataset.column_names))
    if missing:
        raise ConfigError(f"{field} has no column(s) {missing}; columns: {dataset.column_names}")
    dataset = dataset.rename_columns({old: new for old, new in renames.items() if old != new})
    if "prompt" not in dataset.column_names:
        raise ConfigError(f"{field} has no 'prompt' column (set {field}.prompt_column); columns: {dataset.column_names}")
    return dataset
