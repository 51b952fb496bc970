"""Prompt datasets with image and audio columns, and AVQA / MMAU files, in the CLI (issue 11 §2, §3): paths
resolved against the data file and checked by row, string prompts made conversational, and `adrpo grpo train`
reaching its first optimizer step on a tiny vision-language model and a tiny Qwen2-Audio from such files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from adrpo import cli
from adrpo.data.synthetic_audio import write_benchmark, write_wav
from adrpo.errors import ConfigError
from adrpo.llm.tiny import save_model_and_tokenizer
from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor
from adrpo.llm.tiny_vlm import tiny_vlm, tiny_vlm_processor
from adrpo.prompts import load_prompt_dataset

CHARS = list("abcdefghijklmnopqrstuvwxyz ?'[],.:<>/ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def image_file(tmp_path) -> Path:
    (tmp_path / "img").mkdir()
    for name, rgb in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (28, 28), rgb).save(tmp_path / "img" / f"{name}.png")
    return write_jsonl(tmp_path / "vqa.jsonl", [{"question": "what color", "file": f"img/{n}.png"} for n in ("red", "blue")])


def test_image_column_paths_become_images_and_prompts_messages(image_file):
    dataset = load_prompt_dataset({"path": str(image_file), "prompt_column": "question", "image_column": "file"})
    row = dataset[1]
    assert isinstance(row["image"], Image.Image) and row["image"].getpixel((0, 0)) == (0, 0, 255)
    assert row["prompt"] == [{"role": "user", "content": "what color"}]


def test_missing_media_file_names_the_row(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "wav": "ok.wav"}, {"prompt": "q", "wav": "gone.wav"}])
    write_wav(tmp_path / "ok.wav", np.zeros(160, dtype=np.float32))
    with pytest.raises(ConfigError, match=r"dataset: 1 bad media value\(s\) in 2 rows, found before training:\n"
                                          r"  row 1 \(line 2\), column 'wav': audio file '.*gone.wav' does not exist"):
        load_prompt_dataset({"path": str(data), "audio_column": "wav"})
    with pytest.raises(ConfigError, match=r"has no column\(s\) \['sound'\]"):
        load_prompt_dataset({"path": str(data), "audio_column": "sound"})


def test_avqa_and_mmau_formats(tmp_path):
    train_file, test_file = write_benchmark(tmp_path / "bench", train=8, test=8)
    train = load_prompt_dataset({"format": "avqa", "path": str(train_file)})
    test = load_prompt_dataset({"format": "mmau", "path": str(test_file)})
    assert len(train) == 8 and len(test) == 8
    row = test[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith("<answer> </answer>.")
    assert Path(row["audio"]).exists() and row["answer"] in row["choices"]
    with pytest.raises(ConfigError, match=r"dataset.format must be one of \['avqa', 'mmau'\]"):
        load_prompt_dataset({"format": "csv", "path": str(test_file)})


def grpo_train(tmp_path: Path, model: Path, dataset: dict, rewards: list[dict], trainer: str) -> None:
    config = {
        "model_name_or_path": str(model), "trainer": trainer, "dataset": dataset, "rewards": rewards, "monitor": "off",
        "args": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 2,
                 "max_completion_length": 4, "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
                 "report_to": "none", "use_cpu": True, "disable_tqdm": True, "beta": 0.04},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    cli.main(["grpo", "train", "--config", str(tmp_path / "run.yaml")])


def assert_first_step(trainer) -> None:
    assert trainer.state.global_step == 1
    losses = [row[key] for row in trainer.state.log_history for key in ("loss", "train_loss") if key in row]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_grpo_train_on_a_vlm_from_an_image_file(tmp_path, image_file, trl_trainers):
    processor = tiny_vlm_processor(CHARS)
    model = save_model_and_tokenizer(tiny_vlm(processor), processor, tmp_path / "vlm")
    grpo_train(tmp_path, model, {"path": str(image_file), "prompt_column": "question", "image_column": "file"},
               [{"type": "format", "pattern": ".*"}], "adrpo")
    (trainer,) = trl_trainers
    assert_first_step(trainer)
    assert "pixel_values" in trainer._buffered_inputs[0]


def test_grpo_train_on_qwen2_audio_from_avqa_files(tmp_path, trl_trainers):
    train_file, _ = write_benchmark(tmp_path / "bench", train=4, test=1)
    processor = tiny_audio_processor(CHARS)
    model = save_model_and_tokenizer(tiny_audio_lm(processor), processor, tmp_path / "audio-lm")
    grpo_train(tmp_path, model, {"format": "avqa", "path": str(train_file)},
               [{"type": "callable", "path": "adrpo.rewards.choice:choice_accuracy_reward"},
                {"type": "callable", "path": "adrpo.rewards.choice:answer_format_reward", "weight": 0.5}], "grpo")
    (trainer,) = trl_trainers
    assert type(trainer).__name__ == "AudioGRPOTrainer"
    assert_first_step(trainer)
    features = trainer._buffered_inputs[0]["input_features"]
    assert features.shape[0] == 4 and features.abs().sum() > 0


def test_a_media_column_of_numbers_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "q", "img": 3}])
    with pytest.raises(ConfigError, match="dataset: the image column must hold file paths or datasets Image/Audio values"):
        load_prompt_dataset({"path": str(data), "image_column": "img"})
