"""Hub audio columns (``datasets.Audio``), the way AVQA, MMAU and Clotho arrive (issue 16 §1).

Reading a row of a ``datasets.Audio`` column needs torchcodec, whose PyPI wheels do not load with the CPU build of
torch; the dataset loader and the trainer cast such columns to ``Audio(decode=False)`` and the trainer reads each
row's bytes (or path) with soundfile, resampled to the feature extractor's 16 kHz. A "hub" dataset here is a local
folder of parquet files written from WAV files cast to ``Audio(sampling_rate=16000)``, with the bytes embedded as
``push_to_hub`` does, which ``{name: FOLDER}`` reads with ``datasets.load_dataset`` like a hub id.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset
from test_media_datasets import CHARS, assert_first_step, grpo_train
from trl import GRPOConfig

from adrpo.data.audio_clips import load_clip
from adrpo.errors import ConfigError
from adrpo.llm.audio import AudioGRPOTrainer
from adrpo.llm.tiny import save_model_and_tokenizer
from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor
from adrpo.prompts import load_prompt_dataset

RATES = (16000, 8000, 22050, 44100)  # one second each: 100 feature frames once resampled to 16 kHz


def write_wavs(folder: Path, rates=RATES, *, stereo: int | None = None) -> list[str]:
    """One-second tones at ``rates``, 16-bit WAV; the file at index ``stereo`` has two channels."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rate in enumerate(rates):
        tone = 0.3 * np.sin(2 * np.pi * 300 * (i + 1) * np.arange(rate) / rate)
        paths.append(str(folder / f"clip{i}.wav"))
        soundfile.write(paths[-1], np.stack([tone, tone], axis=1) if i == stereo else tone, rate)
    return paths


def hub_folder(tmp_path: Path, paths: list[str]) -> Path:
    """The clips as a ``datasets.Audio(sampling_rate=16000)`` column ``wav`` beside ``question`` and ``id``, written
    as one parquet shard with the audio bytes embedded (the WAV files are then removed: only the bytes remain)."""
    from datasets.table import embed_table_storage

    rows = {"question": [f"what is clip {'abcd'[i]}" for i in range(len(paths))], "wav": paths, "id": list("abcd"[: len(paths)])}
    dataset = Dataset.from_dict(rows).cast_column("wav", Audio(sampling_rate=16000))
    dataset = dataset.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    for path in paths:
        Path(path).unlink()
    return folder


SPEC = {"prompt_column": "question", "audio_column": "wav"}


def test_hub_audio_rows_are_read_undecoded_and_resampled(tmp_path):
    folder = hub_folder(tmp_path, write_wavs(tmp_path / "wav"))
    dataset = load_prompt_dataset({"name": str(folder), **SPEC})
    assert dataset.features["audio"] == Audio(decode=False)
    row = dataset[2]  # a decoded row would need torchcodec: ImportError
    assert isinstance(row["audio"]["bytes"], bytes) and row["prompt"] == [{"role": "user", "content": "what is clip c"}]
    for i in range(len(RATES)):
        assert load_clip(dataset[i]["audio"], sampling_rate=16000, where=f"row {i}").shape == (16000,)


def test_a_stereo_hub_clip_is_refused_by_row_and_column_before_training(tmp_path):
    folder = hub_folder(tmp_path, write_wavs(tmp_path / "wav", rates=(16000, 16000), stereo=1))
    with pytest.raises(ConfigError, match=r"dataset: 1 bad media value\(s\) in 2 rows, found before training:\n"
                                          r"  row 1 \(id 'b'\), column 'wav': audio '.*clip1.wav' has 2 channels"):
        load_prompt_dataset({"name": str(folder), **SPEC})


def test_grpo_train_on_qwen2_audio_from_a_hub_audio_column(tmp_path, trl_trainers):
    folder = hub_folder(tmp_path, write_wavs(tmp_path / "wav"))
    processor = tiny_audio_processor(CHARS)
    model = save_model_and_tokenizer(tiny_audio_lm(processor), processor, tmp_path / "audio-lm")
    grpo_train(tmp_path, model, {"name": str(folder), **SPEC}, [{"type": "format", "pattern": ".*"}], "grpo")
    (trainer,) = trl_trainers
    assert_first_step(trainer)
    batch = trainer._buffered_inputs[0]
    assert batch["input_features"].shape[0] == 4 and batch["input_features"].abs().sum() > 0
    # every clip lasts one second once resampled to 16 kHz, whatever its rate on disk: 100 frames each
    assert batch["feature_attention_mask"].sum(dim=1).tolist() == [100] * 4


def test_the_trainer_reads_a_decoded_audio_column_given_directly(tmp_path):
    """The Python API: a dataset with a ``datasets.Audio`` column (decoded on access) given to the trainer as it is."""
    paths = write_wavs(tmp_path / "wav", rates=(8000, 22050))
    rows = [{"prompt": [{"role": "user", "content": f"clip {c}"}], "audio": p} for c, p in zip("ab", paths)]
    dataset = Dataset.from_list(rows * 2).cast_column("audio", Audio(sampling_rate=16000))
    processor = tiny_audio_processor(CHARS)
    model = save_model_and_tokenizer(tiny_audio_lm(processor), processor, tmp_path / "audio-lm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=4, learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                          bf16=False, disable_tqdm=True, logging_steps=1)
        trainer = AudioGRPOTrainer(model=str(model), reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                                   train_dataset=dataset)
        assert trainer.train_dataset.features["audio"] == Audio(decode=False)
        trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[0]["loss"])
    masks = trainer._buffered_inputs[0]["feature_attention_mask"]
    assert torch.equal(masks.sum(dim=1), torch.full((4,), 100))
