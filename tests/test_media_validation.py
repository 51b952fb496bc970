"""Dataset specs and files checked before training (issue 16 §9): every row's media once at start-up from file
headers, all bad rows in one ConfigError, one row numbering in every message; unknown ``dataset:`` keys refused by
name; an empty or malformed JSON Lines file as one ConfigError line naming the file and the line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_media_datasets import CHARS, grpo_train, write_jsonl

from adrpo.data.audio_clips import load_clip
from adrpo.data.mmau import load_avqa
from adrpo.data.synthetic_audio import write_benchmark
from adrpo.errors import ConfigError
from adrpo.llm.tiny import save_model_and_tokenizer
from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor
from adrpo.prompts import SPEC_KEYS, load_prompt_dataset


def spoil(train_file: Path) -> None:
    """Rows 1, 2 and 3 of a benchmark's AVQA file get a stereo, an empty and an 8 kHz clip; row 4 a missing file."""
    import soundfile

    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    audio = train_file.parent / "audio"
    soundfile.write(audio / f"{rows[1]['id']}.wav", np.zeros((1600, 2), dtype=np.float32), 16000)
    soundfile.write(audio / f"{rows[2]['id']}.wav", np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(audio / f"{rows[3]['id']}.wav", np.zeros(8000, dtype=np.float32), 8000)
    (audio / f"{rows[4]['id']}.wav").unlink()


def test_bad_clips_in_an_avqa_file_are_all_reported_before_training(tmp_path, trl_trainers, capsys):
    train_file, _ = write_benchmark(tmp_path / "bench", train=6, test=1)
    spoil(train_file)
    ids = [row["id"] for row in load_avqa(train_file, check_audio=False)]
    with pytest.raises(ConfigError) as caught:
        load_prompt_dataset({"format": "avqa", "path": str(train_file)})
    lines = str(caught.value).splitlines()
    assert lines[0] == "dataset: 3 bad media value(s) in 6 rows, found before training:"
    assert lines[1].startswith(f"  row 1 (line 2, id '{ids[1]}'), column 'audio': audio '") and lines[1].endswith("has 2 channels; mono audio is expected")
    assert lines[2].startswith(f"  row 2 (line 3, id '{ids[2]}'), column 'audio': audio '") and lines[2].endswith("is empty (0 samples)")
    assert lines[3].startswith(f"  row 4 (line 5, id '{ids[4]}'), column 'audio': audio file '") and lines[3].endswith("does not exist")
    assert len(lines) == 4  # the 8 kHz clip of row 3 is fine: the trainer resamples it
    # through the CLI: the same report, before any model is trained
    processor = tiny_audio_processor(CHARS)
    model = save_model_and_tokenizer(tiny_audio_lm(processor), processor, tmp_path / "audio-lm")
    with pytest.raises(SystemExit):
        grpo_train(tmp_path, model, {"format": "avqa", "path": str(train_file)}, [{"type": "format", "pattern": ".*"}], "grpo")
    assert not trl_trainers
    assert f"row 2 (line 3, id '{ids[2]}'), column 'audio'" in capsys.readouterr().err


def test_clips_are_checked_from_their_headers_without_decoding(tmp_path, monkeypatch):
    import soundfile

    train_file, _ = write_benchmark(tmp_path / "bench", train=3, test=1)
    monkeypatch.setattr(soundfile, "read", lambda *a, **k: pytest.fail("a clip was decoded to check it"))
    assert len(load_prompt_dataset({"format": "avqa", "path": str(train_file)})) == 3


def test_an_8khz_clip_is_resampled_not_refused(tmp_path):
    import soundfile

    train_file, _ = write_benchmark(tmp_path / "bench", train=4, test=1)
    soundfile.write(load_avqa(train_file)[3]["audio"], np.zeros(8000, dtype=np.float32), 8000)
    row = load_prompt_dataset({"format": "avqa", "path": str(train_file)})[3]
    assert load_clip(row["audio"], sampling_rate=16000, where="row 3").shape == (16000,)


def test_one_row_numbering_in_the_loader_and_the_media_check(tmp_path):
    """The same row is named alike whether the AVQA loader or the media check refuses it."""
    train_file, _ = write_benchmark(tmp_path / "bench", train=3, test=1)
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    label = f"row 1 (line 2, id '{rows[1]['id']}')"
    broken = [rows[0], {**rows[1], "answer": "nothing"}, rows[2]]
    train_file.write_text("".join(json.dumps(r) + "\n" for r in broken))
    with pytest.raises(ConfigError, match=re.escape(f"{label}: answer 'nothing' is not among the choices")):
        load_prompt_dataset({"format": "avqa", "path": str(train_file)})
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (train_file.parent / "audio" / f"{rows[1]['id']}.wav").unlink()
    with pytest.raises(ConfigError, match=re.escape(f"\n  {label}, column 'audio': audio file ") + ".* does not exist"):
        load_prompt_dataset({"format": "avqa", "path": str(train_file)})


def test_bad_images_are_all_reported(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "text.png").write_text("not an image")
    data = write_jsonl(tmp_path / "v.jsonl", [{"prompt": "q", "file": f"img/{n}.png"} for n in ("ok", "gone", "text", "also-gone")])
    with pytest.raises(ConfigError) as caught:
        load_prompt_dataset({"path": str(data), "image_column": "file"})
    lines = str(caught.value).splitlines()
    assert lines[0] == "dataset: 3 bad media value(s) in 4 rows, found before training:"
    assert lines[1].startswith("  row 1 (line 2), column 'file': image file '") and lines[1].endswith("gone.png' does not exist")
    assert lines[2].startswith("  row 2 (line 3), column 'file': cannot read image file '")
    assert lines[3].startswith("  row 3 (line 4), column 'file': image file '")


@pytest.mark.parametrize(("spec", "message"), [
    ({"path": "p.jsonl", "prompt_colum": "question"},
     r"dataset: unknown key\(s\) \['prompt_colum'\]; with 'path' the keys are \['path', 'prompt_column', 'answer_column', "
     r"'image_column', 'audio_column'\]"),
    ({"path": "p.jsonl", "audio_columns": "wav"}, r"unknown key\(s\) \['audio_columns'\]"),
    ({"name": "a/b", "splits": "test"}, r"unknown key\(s\) \['splits'\]; with 'name' the keys are \['name', 'config', 'split',"),
    ({"format": "avqa", "path": "a.jsonl", "prompt_column": "q"}, r"unknown key\(s\) \['prompt_column'\]; with 'format' the keys are \['format', 'path'\]"),
    ({"path": "p.jsonl", "name": "a/b"}, r"unknown key\(s\) \['name'\]"),
])
def test_unknown_dataset_keys_are_refused_by_name(tmp_path, spec, message):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "question": "q"}])
    spec = {k: str(tmp_path / v) if k == "path" else v for k, v in spec.items()}
    with pytest.raises(ConfigError, match=message):
        load_prompt_dataset(spec)
    assert set(SPEC_KEYS) == {"path", "name", "format"}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("empty.jsonl", "", r"dataset\.path '.*empty\.jsonl' is empty: no rows$"),
    ("blank.jsonl", "\n  \n", r"dataset\.path '.*blank\.jsonl' has no rows$"),
    ("bad.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n{"prompt": "c"}\n',
     r"^dataset\.path '.*bad\.jsonl': line 3: not valid JSON \(Expecting ',' delimiter, column 15\)$"),
    ("bad.json", '[{"prompt": "a"},\n {"prompt": }]', r"^dataset\.path '.*bad\.json': line 2: not valid JSON \(Expecting value"),
    ("empty.csv", "", r"dataset\.path '.*empty\.csv' is empty: no rows$"),
    ("header.csv", "prompt\n", r"dataset\.path '.*header\.csv' has no rows$"),
])
def test_unreadable_data_files_are_one_config_error_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_prompt_dataset({"path": str(tmp_path / name)})
    assert "\n" not in str(caught.value)
