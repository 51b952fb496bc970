"""MMAU-style multiple-choice audio QA: loading local files, the recipe prompt, accuracy tables.

Two loaders return a list of rows (plain dicts, ready for ``datasets.Dataset.from_list``)::

    {"id": str, "prompt": str, "answer": str, "choices": list[str], "category": str | None, "audio": str}

``prompt`` is :func:`choice_prompt`; ``audio`` is the resolved path (absolute paths are kept,
relative ones are joined to the folder of the data file); ``answer`` is one of ``choices``.

**MMAU format** (:func:`load_mmau`): a JSON file holding a list of objects with

- ``id``: a string or an integer (kept as a string); unique in the file;
- ``question``: a non-empty string;
- ``choices``: a list of at least two non-empty strings, no two equal after
  :func:`normalize_choice` (otherwise no answer could be graded unambiguously);
- ``answer``: a string equal to one of ``choices`` (compared after stripping outer whitespace;
  the row keeps the choice as written in ``choices``);
- ``task`` (MMAU's name) or ``category``: ``"sound"``, ``"music"`` or ``"speech"``, any case;
  when both are present they must agree;
- ``audio_id`` (MMAU's name) or ``audio_path``: the audio file's path.

A field whose value is ``null`` counts as absent. Other fields (MMAU's ``difficulty``, ``sub-category``, ...) are ignored.

**AVQA-style training data** (:func:`load_avqa`): a JSON list of objects, or JSON Lines (one
object per non-blank line; chosen by the ``.jsonl`` suffix), with

- ``id`` or ``video_id``: a string or an integer;
- ``question`` or ``question_text`` (AVQA's name);
- ``choices`` or ``multi_choice`` (AVQA's name): as above;
- ``answer``: one of the choices, or an integer (not a bool) that is a **0-based** index into
  them, as AVQA's original annotations store it;
- ``audio_path``, ``audio`` or ``video_path``: the media file's path (AVQA's ``video_name``
  alone is not accepted: it names a clip, not a file);
- optionally ``task`` or ``category`` as above; the row's ``category`` is None without one.

Every refusal is a :class:`adrpo.errors.ConfigError` naming the file and the row as
:func:`row_label` does (the 0-based row index, then the line number for JSON Lines and the row's
id): missing or mistyped fields, an answer not among the choices, an unknown category, a duplicate
id, and a missing audio file (the last one skipped with ``check_audio=False``).

**Evaluation** (:func:`category_accuracy`, :func:`seed_summary`, :func:`accuracy_table`): per
seed a list of ``(category, correct)`` results -> accuracy per category and in total, in
percent, where the total is over all items (as MMAU reports it, not the mean of the three
categories), then mean ± std over seeds and a markdown table in the layout of the paper's
Table 2.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adrpo.errors import ConfigError

CATEGORIES = ("sound", "music", "speech")
TABLE_COLUMNS = {"sound": "Sound (%)", "music": "Music (%)", "speech": "Speech (%)", "total": "Total (%)"}

_NOT_WORD = re.compile(r"[\W_]+")


def row_label(index: int, *, line: int | None = None, id: str | None = None) -> str:
    """How every refusal of adrpo names a dataset row: its 0-based index, then the file's line number
    (1-based, JSON Lines) and the row's id where known.

    >>> row_label(1, line=2, id="101")
    "row 1 (line 2, id '101')"
    """
    known = ([f"line {line}"] if line is not None else []) + ([f"id {id!r}"] if id is not None else [])
    return f"row {index}" + (f" ({', '.join(known)})" if known else "")


def normalize_choice(text: str) -> str:
    """Case-folded text with every run of punctuation and whitespace turned into one space and the
    ends stripped: ``" The Man. "`` -> ``"the man"``, ``"dog-barking"`` -> ``"dog barking"``."""
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def choice_prompt(question: str, choices: Sequence[str]) -> str:
    """The recipe prompt: each choice wrapped in single quotes as written (no escaping), joined by
    ``", "`` inside square brackets.

    >>> choice_prompt("Who speaks?", ["Man", "Woman"])
    "Who speaks? Please choose the answer from the following options: ['Man', 'Woman']. Output the final answer in <answer> </answer>."
    """
    options = ", ".join(f"'{choice}'" for choice in choices)
    return f"{question} Please choose the answer from the following options: [{options}]. Output the final answer in <answer> </answer>."


def load_mmau(path: str | Path, *, check_audio: bool = True) -> list[dict[str, Any]]:
    """Rows of an MMAU-format JSON file (format in the module docstring); the category is required.

    Raises:
        ConfigError: the file is unreadable or not a JSON list, or a row is refused; the
            message names the file, the row index and its id.
    """
    path = Path(path)
    items = [(i, None, item) for i, item in enumerate(_read_json_list(path))]
    fields = {"id": ("id",), "question": ("question",), "choices": ("choices",), "audio": ("audio_id", "audio_path")}
    return _rows(path, items, fields, category_required=True, index_answers=False, check_audio=check_audio)


def load_avqa(path: str | Path, *, check_audio: bool = True) -> list[dict[str, Any]]:
    """Rows of AVQA-style training data, JSON or JSON Lines (format in the module docstring).

    Raises:
        ConfigError: as :func:`load_mmau`.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        items = _read_json_lines(path)
    else:
        items = [(i, None, item) for i, item in enumerate(_read_json_list(path))]
    fields = {"id": ("id", "video_id"), "question": ("question", "question_text"), "choices": ("choices", "multi_choice"),
              "audio": ("audio_path", "audio", "video_path")}
    return _rows(path, items, fields, category_required=False, index_answers=True, check_audio=check_audio)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the data file ({err.strerror or err})") from err


def _read_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    return data


def _read_json_lines(path: Path) -> list[tuple[int, int, Any]]:
    items = []
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((len(items), line_number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: line {line_number}: not valid JSON ({err})") from err
    return items


def _first(item: Mapping[str, Any], names: Sequence[str]) -> tuple[str, Any] | None:
    """The first of ``names`` present in ``item`` with a non-null value, and that value; or None."""
    return next(((name, item[name]) for name in names if item.get(name) is not None), None)


def _rows(path: Path, items: list[tuple[int, int | None, Any]], fields: Mapping[str, Sequence[str]], *,
          category_required: bool, index_answers: bool, check_audio: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, line_number, item in items:
        found_id = _first(item, fields["id"]) if isinstance(item, dict) else None
        usable_id = found_id is not None and not isinstance(found_id[1], bool) and isinstance(found_id[1], (str, int))
        where = f"{path}: {row_label(index, line=line_number, id=str(found_id[1]) if usable_id else None)}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(item).__name__}")
        row = _row(item, where, path.parent, fields, category_required=category_required, index_answers=index_answers,
                   check_audio=check_audio)
        if row["id"] in seen:
            raise ConfigError(f"{where}: duplicate id, also used by row {seen[row['id']]}")
        seen[row["id"]] = index
        rows.append(row)
    return rows


def _row(item: dict[str, Any], where: str, folder: Path, fields: Mapping[str, Sequence[str]], *,
         category_required: bool, index_answers: bool, check_audio: bool) -> dict[str, Any]:
    required = {**fields, "answer": ("answer",)}
    missing = [" or ".join(repr(n) for n in names) for names in required.values() if _first(item, names) is None]
    category_names = ("task", "category")
    if category_required and _first(item, category_names) is None:
        missing.append("'task' or 'category'")
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    values = {key: _first(item, names) for key, names in fields.items()}

    id_name, id_value = values["id"]
    if isinstance(id_value, bool) or not isinstance(id_value, (str, int)) or not str(id_value).strip():
        raise ConfigError(f"{where}: {id_name!r} must be a non-empty string or an integer, got {id_value!r}")
    question_name, question = values["question"]
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"{where}: {question_name!r} must be a non-empty string, got {question!r}")
    choices = _choices(*values["choices"], where)
    answer = _answer(item["answer"], choices, where, index_answers=index_answers)
    category = _category(item, category_names, where)
    audio = _audio(*values["audio"], folder, where, check_audio=check_audio)
    return {"id": str(id_value), "prompt": choice_prompt(question.strip(), choices), "answer": answer,
            "choices": choices, "category": category, "audio": audio}


def _choices(name: str, value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) and c.strip() for c in value):
        raise ConfigError(f"{where}: {name!r} must be a list of at least two non-empty strings, got {value!r}")
    choices = [c.strip() for c in value]
    by_text: dict[str, int] = {}
    for i, choice in enumerate(choices):
        key = normalize_choice(choice)
        if key in by_text:
            raise ConfigError(f"{where}: choices {by_text[key]} and {i} ({choices[by_text[key]]!r}, {choice!r}) "
                              "are the same answer once case and punctuation are ignored")
        by_text[key] = i
    return choices


def _answer(value: Any, choices: list[str], where: str, *, index_answers: bool) -> str:
    if index_answers and isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(choices):
            raise ConfigError(f"{where}: answer index {value} is out of range for {len(choices)} choices (0-based)")
        return choices[value]
    if isinstance(value, str) and value.strip() in choices:
        return value.strip()
    kinds = "one of the choices or a 0-based index" if index_answers else "one of the choices"
    raise ConfigError(f"{where}: answer {value!r} is not among the choices {choices}; expected {kinds}")


def _category(item: dict[str, Any], names: Sequence[str], where: str) -> str | None:
    given = {name: item[name] for name in names if item.get(name) is not None}
    for name, value in given.items():
        if not isinstance(value, str) or value.strip().lower() not in CATEGORIES:
            raise ConfigError(f"{where}: unknown category {name}={value!r}; expected one of {list(CATEGORIES)}")
    found = {value.strip().lower() for value in given.values()}
    if len(found) > 1:
        raise ConfigError(f"{where}: 'task' and 'category' disagree ({given['task']!r} vs {given['category']!r})")
    return found.pop() if found else None


def _audio(name: str, value: Any, folder: Path, where: str, *, check_audio: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {name!r} must be a non-empty path, got {value!r}")
    audio = Path(value.strip())
    if not audio.is_absolute():
        audio = folder / audio
    if check_audio and not audio.is_file():
        raise ConfigError(f"{where}: audio file {str(audio)!r} ({name}={value!r}) does not exist "
                          "(paths are relative to the data file's folder; check_audio=False skips this check)")
    return str(audio)


# --- evaluation -------------------------------------------------------------------------------


def category_accuracy(results: Sequence[tuple[str, bool]]) -> dict[str, float]:
    """Accuracy in percent per category and ``"total"`` (over all items) for one seed.

    ``results`` holds one ``(category, correct)`` pair per item; ``correct`` is a bool or 0/1.
    A category with no items gets NaN (shown as "–" by :func:`accuracy_table`).

    >>> category_accuracy([("sound", True), ("sound", False), ("music", True), ("speech", False)])
    {'sound': 50.0, 'music': 100.0, 'speech': 0.0, 'total': 50.0}

    Raises:
        ConfigError: an unknown category, a ``correct`` that is not a bool or 0/1, or no results.
    """
    if not results:
        raise ConfigError("accuracy: no results")
    right = dict.fromkeys(CATEGORIES, 0)
    count = dict.fromkeys(CATEGORIES, 0)
    for i, (category, correct) in enumerate(results):
        if category not in count:
            raise ConfigError(f"accuracy: result {i} has unknown category {category!r}; expected one of {list(CATEGORIES)}")
        if not (isinstance(correct, (bool, int, float)) and correct in (0, 1)):
            raise ConfigError(f"accuracy: result {i} has correct={correct!r}; expected a bool or 0/1")
        count[category] += 1
        right[category] += int(correct)
    accuracy = {c: 100.0 * right[c] / count[c] if count[c] else math.nan for c in CATEGORIES}
    accuracy["total"] = 100.0 * sum(right.values()) / len(results)
    return accuracy


def seed_summary(per_seed: Sequence[Sequence[tuple[str, bool]]]) -> dict[str, tuple[float, float]]:
    """``(mean, std)`` in percent over seeds of :func:`category_accuracy`, per category and total.

    ``std`` is the sample standard deviation (n − 1 in the denominator), 0.0 for a single seed.

    Raises:
        ConfigError: no seeds, or a seed's results are refused by :func:`category_accuracy`.
    """
    if not per_seed:
        raise ConfigError("accuracy: no seeds")
    accuracies = [category_accuracy(results) for results in per_seed]
    summary = {}
    for key in (*CATEGORIES, "total"):
        values = [a[key] for a in accuracies]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[key] = (statistics.fmean(values), std)
    return summary


def accuracy_table(methods: Mapping[str, Mapping[str, tuple[float, float]]], *, digits: int = 2) -> str:
    """A markdown table in the layout of the paper's Table 2: one row per method (in the
    mapping's order), columns Sound (%), Music (%), Speech (%), Total (%), cells ``mean ± std``
    from :func:`seed_summary` (a NaN mean is "–").

    >>> print(accuracy_table({"GRPO": {"sound": (70.0, 1.0), "music": (60.0, 0.5), "speech": (50.0, 0.0), "total": (60.0, 0.25)}}))
    | Method | Sound (%) | Music (%) | Speech (%) | Total (%) |
    |---|---|---|---|---|
    | GRPO | 70.00 ± 1.00 | 60.00 ± 0.50 | 50.00 ± 0.00 | 60.00 ± 0.25 |
    """
    lines = ["| Method | " + " | ".join(TABLE_COLUMNS.values()) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for method, summary in methods.items():
        missing = [key for key in TABLE_COLUMNS if key not in summary]
        if missing:
            raise ConfigError(f"accuracy table: method {method!r} has no {missing}")
        cells = ["–" if math.isnan(summary[k][0]) else f"{summary[k][0]:.{digits}f} ± {summary[k][1]:.{digits}f}" for k in TABLE_COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
