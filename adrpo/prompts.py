"""Prompt datasets from local files or the datasets hub, shared by the GRPO recipe and the
text-to-image task.

    {path: prompts.jsonl}                                   # or .json / .csv, with a ``prompt`` column
    {path: drawbench.csv, prompt_column: Prompts}           # rename the column that holds the prompts
    {name: a/dataset, config: null, split: train, prompt_column: text}
    {path: vqa.jsonl, image_column: file}                   # image paths -> PIL images in the ``image`` column
    {path: aqa.jsonl, audio_column: wav}                    # audio paths -> the ``audio`` column
    {format: avqa, path: avqa-train.jsonl}                  # AVQA-style / MMAU-format audio QA files
    {format: mmau, path: mmau-test-mini.json}               #   (adrpo.data.mmau), audio column included

Keys (:data:`SPEC_KEYS`): ``path`` or ``name`` (with ``config`` and ``split``), each with the optional
columns ``prompt_column``, ``answer_column``, ``image_column`` and ``audio_column``; or ``format`` with
``path``. Any other key is refused, naming the allowed ones.

Media columns (``image_column``, ``audio_column``) hold file paths, relative to the data file's folder
or absolute; or, from the hub, ``datasets.Image`` / ``Audio`` values. With a media column, string
prompts become one user message, since TRL and :class:`adrpo.llm.audio.AudioGRPOTrainer` put images
and audio into conversational prompts only. Images are decoded by ``datasets.Image`` when a row is
read. Audio is not decoded here: paths stay paths, and hub ``Audio`` columns are cast to
``Audio(decode=False)`` (each row ``{"bytes", "path"}``), since datasets' own decoding needs
torchcodec; the trainer reads both with soundfile and resamples them to the model's rate
(:func:`adrpo.data.audio_clips.load_clip`).

Every row's media are checked once, here, before training: image paths must name files that open
(hub images are left to datasets); audio (paths and hub values) must exist, be readable and hold one
non-empty channel, judged from the file header (``soundfile.info``), not by decoding; any sampling
rate is fine. All bad rows are reported in one ConfigError, one line each (the first
:data:`SHOWN_PROBLEMS` listed, the rest counted).

Rows are named in every message as :func:`adrpo.data.mmau.row_label` does: the 0-based row index,
then the line number (JSON Lines files) and the row's id where known: ``row 2 (line 3, id 'q2')``.
An empty data file, and a JSON or JSON Lines file with a malformed line, are refused naming the file
(and the line).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adrpo.errors import ConfigError

MEDIA_COLUMNS = {"image_column": "image", "audio_column": "audio"}
QA_FORMATS = ("avqa", "mmau")
COLUMN_KEYS = ("prompt_column", "answer_column", *MEDIA_COLUMNS)
SPEC_KEYS = {"path": ("path", *COLUMN_KEYS), "name": ("name", "config", "split", *COLUMN_KEYS), "format": ("format", "path")}
FILE_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
SHOWN_PROBLEMS = 20  # bad media rows listed in the one ConfigError (the rest are counted)


def load_prompt_dataset(spec: dict[str, Any], *, field: str = "dataset"):
    """A ``datasets.Dataset`` from ``{path: FILE.jsonl|.json|.csv}``, ``{name, config?, split?}`` or
    ``{format: avqa|mmau, path}`` (see the module docstring), its media checked.

    ``prompt_column`` / ``answer_column`` rename a dataset's columns to ``prompt`` / ``answer``
    (e.g. GSM8K's ``question`` and ``answer``); ``image_column`` / ``audio_column`` to ``image`` /
    ``audio``. Errors name ``field``, the config key of the spec.

    Raises:
        ConfigError: an unknown key, a missing or unreadable file, a missing column, or bad media
            (every bad row at once).
    """
    from datasets import Dataset, load_dataset

    form = _form(spec, field)
    if form == "format":
        dataset = Dataset.from_list(_qa_rows(spec, field))
        _check_media(dataset, {"audio": "audio"}, field, lines=_line_numbers(Path(spec["path"])))
        return dataset
    lines = None
    if form == "path":
        path = Path(spec["path"])
        if path.suffix not in FILE_KINDS:
            raise ConfigError(f"{field}.path {str(path)!r}: expected a .jsonl, .json or .csv file")
        if not path.exists():
            raise ConfigError(f"{field}.path {str(path)!r} does not exist")
        dataset = _read_file(path, field)
        folder = path.parent
        lines = _line_numbers(path)
    else:
        dataset = load_dataset(spec["name"], spec.get("config"), split=spec.get("split", "train"))
        folder = Path.cwd()
    keys = {"prompt_column": "prompt", "answer_column": "answer", **MEDIA_COLUMNS}
    renames = {spec[key]: target for key, target in keys.items() if key in spec}
    missing = sorted(set(renames) - set(dataset.column_names))
    if missing:
        raise ConfigError(f"{field} has no column(s) {missing}; columns: {dataset.column_names}")
    dataset = dataset.rename_columns({old: new for old, new in renames.items() if old != new})
    if "prompt" not in dataset.column_names:
        raise ConfigError(f"{field} has no 'prompt' column (set {field}.prompt_column); columns: {dataset.column_names}")
    media = {target: spec[key] for key, target in MEDIA_COLUMNS.items() if key in spec}
    return _with_media(dataset, media, folder, field, lines) if media else dataset


def _form(spec: Any, field: str) -> str:
    """Which of :data:`SPEC_KEYS` the spec is; its keys checked."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{field} must be a mapping such as {{path: prompts.jsonl}}, got {spec!r}")
    form = next((key for key in ("format", "path", "name") if key in spec), None)
    if form is None:
        raise ConfigError(f"{field} needs 'path' (a local file), 'name' (a datasets id) or 'format' ({' or '.join(QA_FORMATS)})")
    unknown = sorted(set(spec) - set(SPEC_KEYS[form]))
    if unknown:
        raise ConfigError(f"{field}: unknown key(s) {unknown}; with {form!r} the keys are {list(SPEC_KEYS[form])}")
    return form


def _read_file(path: Path, field: str):
    """The rows of a local .jsonl / .json / .csv file, read by datasets; its failures as one ConfigError line."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    name = f"{field}.path {str(path)!r}"
    try:
        return load_dataset(FILE_KINDS[path.suffix], data_files=str(path), split="train")
    except StopIteration:  # datasets' json builder on an empty file
        raise ConfigError(f"{name} is empty: no rows") from None
    except ValueError as err:
        if "corresponds to no data" not in str(err):  # a file of blank lines, [], a CSV header alone
            raise
        raise ConfigError(f"{name} has no rows") from None
    except DatasetGenerationError as err:
        if type(err.__cause__).__name__ == "EmptyDataError":  # pandas, on an empty CSV
            raise ConfigError(f"{name} is empty: no rows") from None
        raise ConfigError(f"{name}: {_parse_problem(path, err)}") from None


def _parse_problem(path: Path, err: Exception) -> str:
    """Where a data file datasets could not read goes wrong: the first malformed JSON line, else datasets' cause."""
    cause = err.__cause__ or err
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks = enumerate(text.splitlines(), start=1) if path.suffix == ".jsonl" else [(1, text)]
        for start, chunk in chunks:
            if not chunk.strip():
                continue
            try:
                json.loads(chunk)
            except json.JSONDecodeError as bad:
                return f"line {start + bad.lineno - 1}: not valid JSON ({bad.msg}, column {bad.colno})"
    return f"cannot be read as {FILE_KINDS[path.suffix]} ({type(cause).__name__}: {cause})"


def _line_numbers(path: Path) -> list[int] | None:
    """For a JSON Lines file, the 1-based line number of each row (its non-blank lines, as datasets and
    :func:`adrpo.data.mmau.load_avqa` read them); None for other files."""
    if path.suffix != ".jsonl":
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    return [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _qa_rows(spec: dict[str, Any], field: str) -> list[dict[str, Any]]:
    from adrpo.data.mmau import load_avqa, load_mmau

    if spec["format"] not in QA_FORMATS:
        raise ConfigError(f"{field}.format must be one of {list(QA_FORMATS)}, got {spec['format']!r}")
    if "path" not in spec:
        raise ConfigError(f"{field} with format {spec['format']!r} needs 'path'")
    # missing audio files are found with the other media problems, every row at once
    rows = (load_avqa if spec["format"] == "avqa" else load_mmau)(spec["path"], check_audio=False)
    return [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]


def _with_media(dataset, columns: dict[str, str], folder: Path, field: str, lines: list[int] | None):
    """``columns`` (the dataset's column -> its name in the spec): file paths resolved against ``folder``,
    hub audio left undecoded, every row checked; images decoded on access; string prompts turned into one
    user message."""
    from datasets import Audio, Image

    paths = []  # the columns of file paths; datasets' own Image / Audio columns are read by datasets / the trainer
    for column in columns:
        feature = dataset.features[column]
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            paths.append(column)
        elif isinstance(feature, Audio):
            if feature.decode:
                dataset = dataset.cast_column(column, Audio(decode=False))
        elif not isinstance(feature, Image):
            raise ConfigError(f"{field}: the {column} column must hold file paths or datasets Image/Audio values, got {feature}")

    def resolve(row: dict[str, Any]) -> dict[str, Any]:
        for column in paths:
            value = row[column]
            if isinstance(value, str) and not Path(value).is_absolute():
                row[column] = str(folder / value)
        if isinstance(row["prompt"], str):
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
        return row

    dataset = dataset.map(resolve)
    checked = {column: name for column, name in columns.items() if column in paths or column == "audio"}
    _check_media(dataset, checked, field, lines=lines)
    return dataset.cast_column("image", Image()) if "image" in paths else dataset


def _check_media(dataset, columns: dict[str, str], field: str, *, lines: list[int] | None) -> None:
    """Every row's ``columns`` (the dataset's column -> its name in the spec) checked by :func:`_media_problem`.

    Raises:
        ConfigError: listing every bad row (the first :data:`SHOWN_PROBLEMS`) as ``row_label``, column: problem.
    """
    from adrpo.data.mmau import row_label

    if not columns:
        return
    ids = "id" in dataset.column_names
    problems = []
    index = 0
    for batch in dataset.select_columns([*columns, *(["id"] if ids else [])]).iter(batch_size=256):
        size = len(batch[next(iter(columns))])
        for offset in range(size):
            row = index + offset
            for column, name in columns.items():
                problem = _media_problem(column, batch[column][offset])
                if problem:
                    label = row_label(row, line=lines[row] if lines and row < len(lines) else None,
                                      id=str(batch["id"][offset]) if ids and batch["id"][offset] is not None else None)
                    problems.append(f"{label}, column {name!r}: {problem}")
        index += size
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise ConfigError(f"{field}: {len(problems)} bad media value(s) in {index} rows, found before training:\n  "
                          + "\n  ".join(problems[:SHOWN_PROBLEMS]) + more)


def _media_problem(column: str, value: Any) -> str | None:
    """Why a row's image or audio value cannot be used, or None; headers only, nothing is decoded."""
    if column == "audio":
        if value is None:
            return "no audio"
        from adrpo.data.audio_clips import audio_problem

        return audio_problem(value)
    if not isinstance(value, str):
        return f"must be a file path, got {type(value).__name__}"
    if not Path(value).is_file():
        return f"image file {value!r} does not exist"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(value):  # reads the header only
            return None
    except (UnidentifiedImageError, OSError) as err:
        return f"cannot read image file {value!r} ({err})"
