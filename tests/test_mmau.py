"""MMAU / AVQA loaders on hand-written files in tmp_path (fake audio as empty files): the rows and
the recipe prompt, path resolution, every refusal naming the file, row and id, and the accuracy
aggregation with hand-computed percentages."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import pytest

from adrpo.data import mmau
from adrpo.data.mmau import accuracy_table, category_accuracy, choice_prompt, load_avqa, load_mmau, seed_summary
from adrpo.errors import ConfigError


def _item(i: int, task: str, **overrides) -> dict:
    item = {"id": f"q{i}", "audio_id": f"./audios/{i}.wav", "question": f"Question {i}?",
            "choices": ["Man", "Woman", "Child"], "answer": "Woman", "task": task, "difficulty": "easy"}
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not None}


def _write(tmp_path: Path, items: list, name: str = "mmau.json", audio: bool = True) -> Path:
    (tmp_path / "audios").mkdir(exist_ok=True)
    if audio:
        for i in range(len(items)):
            (tmp_path / "audios" / f"{i}.wav").touch()
    path = tmp_path / name
    path.write_text(json.dumps(items))
    return path


ITEMS = [_item(0, "sound"), _item(1, "sound"), _item(2, "music"), _item(3, "Music"), _item(4, "speech"), _item(5, "speech")]


def test_docstring_examples():
    assert doctest.testmod(mmau).failed == 0


def test_choice_prompt_follows_the_recipe_template():
    assert choice_prompt("What plays?", ["Piano", "Violin's bow"]) == (
        "What plays? Please choose the answer from the following options: ['Piano', 'Violin's bow']. "
        "Output the final answer in <answer> </answer>.")


def test_load_mmau_rows(tmp_path):
    rows = load_mmau(_write(tmp_path, ITEMS))
    assert [r["category"] for r in rows] == ["sound", "sound", "music", "music", "speech", "speech"]
    assert rows[0] == {
        "id": "q0",
        "prompt": choice_prompt("Question 0?", ["Man", "Woman", "Child"]),
        "answer": "Woman",
        "choices": ["Man", "Woman", "Child"],
        "category": "sound",
        "audio": str(tmp_path / "audios" / "0.wav"),
    }


def test_rows_make_a_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(load_mmau(_write(tmp_path, ITEMS)))
    assert dataset.column_names == ["id", "prompt", "answer", "choices", "category", "audio"]
    assert dataset[2]["choices"] == ["Man", "Woman", "Child"]


def test_category_field_absolute_audio_path_and_integer_id(tmp_path):
    absolute = tmp_path / "elsewhere.wav"
    absolute.touch()
    items = [_item(0, None, category="SPEECH", audio_id=None, audio_path=str(absolute), id=7),
             _item(1, "music", category="music", answer=" Child "),
             {**_item(2, "sound", category="sound"), "task": None}]  # a null field counts as absent
    rows = load_mmau(_write(tmp_path, items))
    assert (rows[0]["id"], rows[0]["category"], rows[0]["audio"]) == ("7", "speech", str(absolute))
    assert rows[1]["answer"] == "Child"
    assert rows[2]["category"] == "sound"


def test_check_audio_false_skips_the_existence_check(tmp_path):
    rows = load_mmau(_write(tmp_path, ITEMS, audio=False), check_audio=False)
    assert rows[5]["audio"] == str(tmp_path / "audios" / "5.wav")


@pytest.mark.parametrize(
    "bad, message",
    [
        (_item(1, "music", answer="Cat"), r"row 1 \(id 'q1'\): answer 'Cat' is not among the choices"),
        (_item(1, "noise"), r"row 1 \(id 'q1'\): unknown category task='noise'"),
        (_item(1, "music", category="speech"), r"row 1 \(id 'q1'\): 'task' and 'category' disagree"),
        (_item(1, None), r"row 1 \(id 'q1'\): missing field\(s\) 'task' or 'category'"),
        (_item(1, "music", question=None, choices=None), r"row 1 \(id 'q1'\): missing field\(s\) 'question', 'choices'"),
        (_item(1, "music", audio_id=None), r"row 1 \(id 'q1'\): missing field\(s\) 'audio_id' or 'audio_path'"),
        ({**_item(1, "music"), "audio_id": None}, r"missing field\(s\) 'audio_id' or 'audio_path'"),  # null is absent
        (_item(1, "music", id=None), r"row 1: missing field\(s\) 'id'"),
        (_item(1, "music", id="q0"), r"row 1 \(id 'q0'\): duplicate id, also used by row 0"),
        (_item(1, "music", choices="Man, Woman", answer="Man"), r"row 1 \(id 'q1'\): 'choices' must be a list of at least two"),
        (_item(1, "music", choices=["Woman"]), r"'choices' must be a list of at least two"),
        (_item(1, "music", choices=["Woman", "woman."]), r"row 1 \(id 'q1'\): choices 0 and 1 .* are the same answer"),
        (_item(1, "music", question=""), r"'question' must be a non-empty string"),
        (_item(1, "music", answer=1), r"answer 1 is not among the choices"),  # MMAU answers are texts, not indices
        (_item(1, "music", audio_id=3), r"'audio_id' must be a non-empty path"),
        ("not an object", r"row 1: expected a JSON object"),
    ],
)
def test_load_mmau_refuses_bad_rows_naming_file_row_and_id(tmp_path, bad, message):
    path = _write(tmp_path, [ITEMS[0], bad])
    with pytest.raises(ConfigError, match=message) as info:
        load_mmau(path)
    assert str(path) in str(info.value)


def test_a_missing_audio_file_names_the_row_and_the_resolved_path(tmp_path):
    path = _write(tmp_path, ITEMS)
    (tmp_path / "audios" / "4.wav").unlink()
    with pytest.raises(ConfigError, match=r"row 4 \(id 'q4'\): audio file .*4\.wav.* does not exist"):
        load_mmau(path)
    assert len(load_mmau(path, check_audio=False)) == 6


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ('{"id": 1}', "expected a JSON list")])
def test_load_mmau_refuses_a_file_that_is_not_a_json_list(tmp_path, text, message):
    path = tmp_path / "mmau.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_mmau(path)


def test_load_mmau_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read"):
        load_mmau(tmp_path / "nope.json")


# --- AVQA-style training data -----------------------------------------------------------------


def _avqa(i: int, **overrides) -> dict:
    item = {"video_id": 100 + i, "question_text": "What makes the sound?", "multi_choice": ["car", "dog", "bird", "train"],
            "answer": 1, "video_path": f"audios/{i}.wav"}
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not None}


def test_load_avqa_json_lines_with_index_answers(tmp_path):
    (tmp_path / "audios").mkdir()
    for i in range(3):
        (tmp_path / "audios" / f"{i}.wav").touch()
    lines = [json.dumps(_avqa(0)), "", json.dumps(_avqa(1, answer="train", category="sound")),
             json.dumps({"id": "x", "question": "Q?", "choices": ["a", "b"], "answer": "b", "audio": "audios/2.wav"})]
    path = tmp_path / "avqa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = load_avqa(path)
    assert [(r["id"], r["answer"], r["category"]) for r in rows] == [("100", "dog", None), ("101", "train", "sound"), ("x", "b", None)]
    assert rows[0]["prompt"] == choice_prompt("What makes the sound?", ["car", "dog", "bird", "train"])
    assert rows[0]["audio"] == str(tmp_path / "audios" / "0.wav")


def test_load_avqa_json_list(tmp_path):
    rows = load_avqa(_write(tmp_path, [_avqa(0), _avqa(1, answer=0)], name="avqa.json"))
    assert [r["answer"] for r in rows] == ["dog", "car"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (_avqa(1, answer=4), r"row 1 \(line 2, id '101'\): answer index 4 is out of range for 4 choices"),
        (_avqa(1, answer=True), r"row 1 \(line 2, id '101'\): answer True is not among the choices"),
        (_avqa(1, answer="cat"), r"answer 'cat' is not among the choices"),
        (_avqa(1, video_path=None), r"missing field\(s\) 'audio_path' or 'audio' or 'video_path'"),
        (_avqa(1, category="noise"), r"unknown category category='noise'"),
        (_avqa(1, video_path="audios/missing.wav"), r"row 1 \(line 2, id '101'\): audio file .*missing\.wav"),
    ],
)
def test_load_avqa_refuses_bad_rows(tmp_path, bad, message):
    path = _write(tmp_path, [], name="avqa.jsonl")
    for i in range(2):
        (tmp_path / "audios" / f"{i}.wav").touch()
    path.write_text(json.dumps(_avqa(0)) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_avqa(path)


def test_load_avqa_names_a_bad_json_line(tmp_path):
    path = tmp_path / "avqa.jsonl"
    path.write_text(json.dumps(_avqa(0)) + "\n\n{oops\n")
    with pytest.raises(ConfigError, match=r"avqa\.jsonl: line 3: not valid JSON"):
        load_avqa(path, check_audio=False)


# --- evaluation aggregation -------------------------------------------------------------------

# Seed 0: sound 2/4, music 1/2, speech 2/2 -> 50, 50, 100; total 5/8 = 62.5 (not the mean of the
# three, 66.67). Seed 1: sound 3/4, music 2/2, speech 0/2 -> 75, 100, 0; total 5/8 = 62.5.
SEED_0 = [("sound", True), ("sound", False), ("sound", True), ("sound", False),
          ("music", 1), ("music", 0), ("speech", True), ("speech", True)]
SEED_1 = [("sound", True), ("sound", True), ("sound", True), ("sound", False),
          ("music", True), ("music", True), ("speech", False), ("speech", False)]


def test_category_accuracy_total_is_over_all_items():
    assert category_accuracy(SEED_0) == {"sound": 50.0, "music": 50.0, "speech": 100.0, "total": 62.5}
    assert category_accuracy(SEED_1) == {"sound": 75.0, "music": 100.0, "speech": 0.0, "total": 62.5}


def test_a_category_without_items_is_nan():
    accuracy = category_accuracy([("sound", True), ("music", False)])
    assert math.isnan(accuracy["speech"]) and accuracy["total"] == 50.0


@pytest.mark.parametrize("results, message", [([], "no results"), ([("noise", True)], "result 0 has unknown category 'noise'"),
                                              ([("sound", True), ("music", 2)], "result 1 has correct=2"),
                                              ([("sound", "yes")], "correct='yes'")])
def test_category_accuracy_refuses_bad_results(results, message):
    with pytest.raises(ConfigError, match=message):
        category_accuracy(results)


def test_seed_summary_mean_and_sample_std():
    summary = seed_summary([SEED_0, SEED_1])
    # sound: mean (50 + 75)/2 = 62.5, sample std |75 − 50|/√2 = 17.678; music: 75 ± 35.355;
    # speech: 50 ± 70.711; total: 62.5 ± 0.
    assert summary["sound"] == pytest.approx((62.5, 25 / math.sqrt(2)))
    assert summary["music"] == pytest.approx((75.0, 50 / math.sqrt(2)))
    assert summary["speech"] == pytest.approx((50.0, 100 / math.sqrt(2)))
    assert summary["total"] == pytest.approx((62.5, 0.0))
    assert seed_summary([SEED_0])["sound"] == (50.0, 0.0)
    with pytest.raises(ConfigError, match="no seeds"):
        seed_summary([])


def test_accuracy_table_layout():
    table = accuracy_table({"GRPO": seed_summary([SEED_0, SEED_1]), "ADRPO": seed_summary([SEED_1])}, digits=1)
    assert table.splitlines() == [
        "| Method | Sound (%) | Music (%) | Speech (%) | Total (%) |",
        "|---|---|---|---|---|",
        "| GRPO | 62.5 ± 17.7 | 75.0 ± 35.4 | 50.0 ± 70.7 | 62.5 ± 0.0 |",
        "| ADRPO | 75.0 ± 0.0 | 100.0 ± 0.0 | 0.0 ± 0.0 | 62.5 ± 0.0 |",
    ]
    assert "| – |" in accuracy_table({"M": seed_summary([[("sound", True), ("music", True)]])})
    with pytest.raises(ConfigError, match="method 'M' has no \\['total'\\]"):
        accuracy_table({"M": {"sound": (1.0, 0.0), "music": (1.0, 0.0), "speech": (1.0, 0.0)}})
