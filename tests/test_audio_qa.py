"""The audio QA miniature (adrpo/tasks/audio_qa.py) and its Table 2 / Table 3 report (issue 11 §4): rows in the
trainer's format, whole-word tokens keeping prompts short, a cached pretrained Qwen2-Audio that TRL can load, an
evaluator that is a function of (policy, rows, seed) and leaves torch's random state alone, and per-category
tables with hand-computed means."""

from __future__ import annotations

import statistics

import pytest
import torch
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from adrpo.experiments.report import category_tables
from adrpo.llm.audio import with_audio_part
from adrpo.tasks import audio_qa
from adrpo.tasks.audio_qa import AudioQASettings, base_model_path, encode_prompts, evaluate_policy, split_rows

TINY = AudioQASettings(train_items=16, test_items=8, steps=10, hidden=16, audio_hidden=16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = base_model_path(TINY, cache=cache)
    return path, Qwen2AudioForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def test_rows_are_conversational_with_one_clip_and_a_gradable_answer():
    train, held_out = split_rows(TINY)
    assert len(train) == 16 and len(held_out) == 8
    assert not {r["id"] for r in train} & {r["id"] for r in held_out}
    for row in train + held_out:
        (message,) = row["prompt"]
        assert message["role"] == "user"
        assert message["content"].endswith("Output the final answer in <answer> </answer>.")
        assert row["answer"] in row["choices"] and row["audio"].shape == (16000,)
    assert {r["category"] for r in held_out} == {"sound", "music", "speech"}


def test_base_model_is_cached_and_prompts_use_whole_word_tokens(tiny_model, tmp_path_factory):
    path, model, processor = tiny_model
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert base_model_path(TINY, cache=path.parent.parent) == path  # the cached folder, not a second pretraining
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    _, held_out = split_rows(TINY)
    ids = processor.apply_chat_template([held_out[0]["prompt"]], add_generation_prompt=True, tokenize=True)[0]
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    assert " Please choose the answer from the following options: [" in tokens
    assert len(ids) < 40  # the recipe prompt's ~150 characters in a few tokens
    assert model.config.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")


def test_evaluation_is_seeded_and_leaves_the_random_state(tiny_model):
    _, model, processor = tiny_model
    _, held_out = split_rows(TINY)
    state = torch.random.get_rng_state()
    first = evaluate_policy(model, model, processor, held_out, group=3, max_new_tokens=6, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert evaluate_policy(model, model, processor, held_out, group=3, max_new_tokens=6, seed=5) == first
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference
    assert first["acc/total"] == pytest.approx(100 * first["reward"])
    # total over all 24 samples: 9 sound, 9 music and 6 speech (3 + 3 + 2 held-out clips, 3 samples each)
    weighted = (9 * first["acc/sound"] + 9 * first["acc/music"] + 6 * first["acc/speech"]) / 24
    assert first["acc/total"] == pytest.approx(weighted)
    assert 0.0 <= first["format"] <= 1.0 and first["entropy"] > 0.0


def test_held_out_prompts_extract_each_clip_once_with_the_same_features(tiny_model, monkeypatch):
    _, _, processor = tiny_model
    _, held_out = split_rows(TINY)
    repeated = [row for row in held_out for _ in range(3)]  # as the evaluation repeats each row for its G samples
    extractor = processor.feature_extractor
    seen: list[int] = []
    extract = type(extractor).__call__
    monkeypatch.setattr(type(extractor), "__call__", lambda self, raw, *a, **k: seen.append(len(raw)) or extract(self, raw, *a, **k))
    ids, features = encode_prompts(processor, repeated)
    assert seen == [len(held_out)] and processor.feature_extractor is extractor

    monkeypatch.setattr(audio_qa, "conversation", lambda row: with_audio_part(row["prompt"], row["audio"].copy(), where=""))
    every_ids, every = encode_prompts(processor, repeated)  # every copy its own array: each extracted
    assert seen == [len(held_out), len(repeated)]
    assert ids == every_ids and all(torch.equal(features[key], every[key]) for key in every)


def test_category_tables_hand_computed():
    def run(label, role, seed, base, last):
        cats = ("sound", "music", "speech", "total")
        return {"label": label, "role": role, "seed": seed, "trajectory": [
            {"step": 0, **{f"acc/{c}": v for c, v in zip(cats, base)}},
            {"step": 10, **{f"acc/{c}": v for c, v in zip(cats, last)}}]}

    results = {"spec": {"task": "audio_qa"}, "runs": [
        run("GRPO", "baseline", 0, (50, 40, 80, 56), (60, 40, 90, 63)),
        run("GRPO", "baseline", 1, (52, 42, 82, 58), (70, 50, 90, 70)),
        run("ADRPO", "adaptive", 0, (50, 40, 80, 56), (66, 44, 92, 67)),
        run("ADRPO", "adaptive", 1, (52, 42, 82, 58), (64, 46, 94, 68)),
    ]}
    table2, table3, as_json = category_tables(results)
    assert as_json["Base"]["sound"] == {"mean": 51.0, "std": pytest.approx(statistics.stdev([50, 52]))}
    assert as_json["GRPO"]["total"] == {"mean": 66.5, "std": pytest.approx(statistics.stdev([63, 70]))}
    assert as_json["ADRPO"]["music"] == {"mean": 45.0, "std": pytest.approx(statistics.stdev([44, 46]))}
    assert "| GRPO | 65.00 ± 7.07 | 45.00 ± 7.07 | 90.00 ± 0.00 | 66.50 ± 4.95 |" in table2
    assert [line.split(" |")[0] for line in table3.splitlines()[2:4]] == ["| Base", "| ADRPO"]  # adaptive rows only
    assert "GRPO" not in table3.replace("ADRPO", "")
