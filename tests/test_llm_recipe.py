"""The GRPO recipe from a YAML mapping (load_prompts, build_trainer), ``adrpo grpo train`` and a
tiny ``adrpo grpo compare`` on the arithmetic miniature, all on tiny offline models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from trl import GRPOTrainer

from adrpo import cli
from adrpo.llm.recipe import build_trainer
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.trainer import ADRPOTrainer
from adrpo.prompts import load_prompt_dataset as load_prompts

ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(3)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    tokenizer = char_tokenizer(list("0123456789+="))
    model = tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def jsonl(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def recipe(model_path, jsonl, output_dir, **overrides):
    values = {
        "model_name_or_path": str(model_path),
        "trainer": "adrpo",
        "dataset": {"path": str(jsonl)},
        "rewards": [{"type": "math_answer", "weight": 1.0}, {"type": "format", "pattern": "\\d+", "weight": 0.5}],
        "args": {"output_dir": str(output_dir), "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                 "max_completion_length": 3, "learning_rate": 1e-2, "report_to": "none", "save_strategy": "no",
                 "logging_steps": 1, "disable_tqdm": True, "use_cpu": True, "seed": 0},
    }
    values.update(overrides)
    return values


def build(values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_trainer(values)


# --- load_prompts ---------------------------------------------------------------------------


def test_load_prompts_jsonl_and_csv(tmp_path, jsonl):
    from_jsonl = load_prompts({"path": str(jsonl)})
    assert from_jsonl["prompt"] == [row["prompt"] for row in ROWS]
    assert from_jsonl["answer"] == [row["answer"] for row in ROWS]

    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,reference\nhello,world\nfoo,bar\n")
    from_csv = load_prompts({"path": str(csv)})
    assert from_csv["prompt"] == ["hello", "foo"] and from_csv["reference"] == ["world", "bar"]


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda d: {"path": str(d / "absent.jsonl")}, ["absent.jsonl", "does not exist"]),
        (lambda d: {"path": str(d / "prompts.txt")}, ["prompts.txt", ".jsonl, .json or .csv"]),
        (lambda d: {"split": "train"}, ["'path'", "'name'"]),
    ],
)
def test_load_prompts_errors(tmp_path, make, needles):
    (tmp_path / "prompts.txt").write_text("prompt\nx\n")
    with pytest.raises(ValueError) as info:
        load_prompts(make(tmp_path))
    for needle in needles:
        assert needle in str(info.value)


def test_load_prompts_needs_a_prompt_column(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,answer\n1+1=,2\n")
    with pytest.raises(ValueError, match=r"no 'prompt' column \(set dataset.prompt_column\); columns: \['question', 'answer'\]"):
        load_prompts({"path": str(path)})


# --- build_trainer --------------------------------------------------------------------------


def test_build_trainer_adrpo(model_path, jsonl, tmp_path):
    trainer = build(recipe(model_path, jsonl, tmp_path / "out"))
    assert type(trainer) is ADRPOTrainer
    assert trainer.args.reward_weights == [1.0, 0.5]
    assert trainer.args.bf16 is False and trainer.args.gradient_checkpointing is False
    assert [f.__name__ for f in trainer.reward_funcs] == ["math_answer_reward", "format_match"]
    assert (trainer.args.beta, trainer.args.adv_clip_min, trainer.args.adv_clip_max) == (0.04, -0.04, 0.04)
    assert len(trainer.train_dataset) == len(ROWS)


def test_build_trainer_sets_checkpointing_by_its_current_name(model_path, jsonl, tmp_path):
    """Our CPU default must not trip transformers' `gradient_checkpointing is deprecated` FutureWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer(recipe(model_path, jsonl, tmp_path / "out"))
    assert not [w for w in caught if issubclass(w.category, FutureWarning) and "checkpointing" in str(w.message)]
    assert trainer.args.activation_checkpointing is False and trainer.args.gradient_checkpointing is False
    values = recipe(model_path, jsonl, tmp_path / "out")
    values["args"]["activation_checkpointing"] = True
    assert build(values).args.activation_checkpointing is True  # a value the YAML gives is kept


def test_build_trainer_grpo_is_trl_grpo_with_the_audio_path(model_path, jsonl, tmp_path):
    """`trainer: grpo` is TRL's GRPOTrainer plus the audio path (stock TRL on text: tests/test_audio.py), fixed beta."""
    from adrpo.llm.audio import AudioGRPOTrainer

    trainer = build(recipe(model_path, jsonl, tmp_path / "out", trainer="grpo"))
    assert type(trainer) is AudioGRPOTrainer and isinstance(trainer, GRPOTrainer)
    assert not hasattr(trainer.args, "adv_clip_min")


@pytest.mark.parametrize(
    "change, needles",
    [
        ({"modle": "x"}, ["'modle'", "unknown key"]),
        ({"model_name_or_path": None}, ["'model_name_or_path'"]),
        ({"rewards": []}, ["rewards is empty"]),
        ({"trainer": "ppo"}, ["'ppo'", "'adrpo' or 'grpo'"]),
    ],
)
def test_build_trainer_errors_name_the_key(model_path, jsonl, tmp_path, change, needles):
    values = recipe(model_path, jsonl, tmp_path / "out")
    for key, value in change.items():
        if value is None:
            del values[key]
        else:
            values[key] = value
    with pytest.raises(ValueError) as info:
        build(values)
    for needle in needles:
        assert needle in str(info.value)


def test_build_trainer_peft_trains_only_lora(model_path, jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    trainer = build(recipe(model_path, jsonl, out, peft={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n and "q_proj" in n for n in trainable)
    # one layer, q_proj 16 -> 16 with r = 2: lora_A (2×16) + lora_B (16×2) = 64 parameters
    assert sum(p.numel() for p in trainable.values()) == 2 * 16 + 16 * 2
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert trainer.state.global_step == 2
    assert any(not torch.equal(params[n], trainable[n]) for n in trainable)  # the adapter learned
    assert all(torch.equal(params[n], frozen[n]) for n in frozen)  # the base did not
    # save_strategy "no": no checkpoint, no stray files in the working directory
    assert not out.exists() or not any(out.glob("checkpoint-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["prompts.jsonl", *(["out"] if out.exists() else [])])


# --- the CLI --------------------------------------------------------------------------------


def test_cli_grpo_train_saves_the_model(model_path, jsonl, tmp_path, capsys):
    out = tmp_path / "cli-out"
    values = recipe(model_path, jsonl, out)
    values["args"]["max_steps"] = 50  # overridden on the command line
    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.main(["grpo", "train", "--config", str(config), "--set", "args.max_steps=2"])
    assert f"model saved to {out}" in capsys.readouterr().out
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    saved, initial = load_file(out / "model.safetensors"), load_file(model_path / "model.safetensors")
    assert saved.keys() == initial.keys()
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)  # trained, not a copy
    # the model, its tokenizer (a folder TRL or vLLM can load back) and TRL's args; no checkpoint-*
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.bin",
    ]


LORA = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}


@pytest.mark.parametrize("kind, args, peft", [("adrpo", {}, None), ("grpo", {"activation_checkpointing": True}, None), ("adrpo", {}, LORA)],
                         ids=["adrpo", "grpo-checkpointing", "adrpo-peft"])
def test_cli_grpo_train_raises_no_future_warning(model_path, jsonl, tmp_path, kind, args, peft):
    """Two steps of `adrpo grpo train` show no FutureWarning: transformers' for the old checkpointing names, which
    TRL calls at every generation (with checkpointing on: disable and enable too) and peft when it wraps the model,
    are ignored (adrpo.llm.trl_deprecations); our own arguments use the current names."""
    values = recipe(model_path, jsonl, tmp_path / "out", trainer=kind, **({"peft": peft} if peft else {}))
    values["args"].update(args)
    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump(values))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.main(["grpo", "train", "--config", str(config)])
    assert not [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]


def test_trl_checkpointing_deprecations_are_ignored_and_nothing_else(model_path):
    """Only transformers' modeling_utils warnings for the three old names are ignored: the same text raised from
    elsewhere (transformers' deprecated `TrainingArguments.gradient_checkpointing` is raised from training_args) shows.
    Called again, the filter is not added twice (a change to the filters would reset Python's once-only registry)."""
    from transformers import AutoModelForCausalLM

    from adrpo.llm.trl_deprecations import ignore_trl_checkpointing_deprecations

    model = AutoModelForCausalLM.from_pretrained(model_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ignore_trl_checkpointing_deprecations()
        installed = list(warnings.filters)
        ignore_trl_checkpointing_deprecations()  # at every generation: the filters stay as they are
        assert warnings.filters == installed
        assert model.is_gradient_checkpointing is False
        model.gradient_checkpointing_enable()
        model.gradient_checkpointing_disable()
        assert not caught
        warnings.warn_explicit("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, "training_args.py", 1,
                               module="transformers.training_args")
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)  # from here
    assert len(caught) == 2


def test_cli_grpo_train_config_error_exits_2(model_path, jsonl, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(recipe(model_path, jsonl, tmp_path / "out", trainer="ppo")))
    with pytest.raises(SystemExit) as info:
        cli.main(["grpo", "train", "--config", str(config)])
    assert info.value.code == 2
    assert "trainer must be 'adrpo' or 'grpo', got 'ppo'" in capsys.readouterr().err


# --- grpo compare ---------------------------------------------------------------------------


def test_cli_grpo_compare_on_the_tiny_arithmetic_miniature(tmp_path, monkeypatch):
    monkeypatch.setenv("ADRPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "compare"
    spec = {
        "task_args": {"max_operand": 5, "held_out": 5, "steps": 20, "hidden": 16, "layers": 1},
        "trainer": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 3,
                    "learning_rate": 1e-3, "disable_tqdm": True},
        "eval": {"steps": 1, "group": 2, "prompts": 3},
        "seeds": [0],
        "output_dir": str(out),
        "methods": [{"label": "GRPO b=0.04", "trainer": "grpo", "beta": 0.04},
                    {"label": "ADRPO b0=0.04", "trainer": "adrpo", "beta": 0.04}],
    }
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.main(["grpo", "compare", "--config", str(config)])

    assert any((tmp_path / "cache" / "arithmetic").glob("model-*/config.json"))  # pretrained into ADRPO_CACHE
    table = (out / "table.md").read_text().splitlines()
    for label in ("Base", "GRPO b=0.04", "ADRPO b0=0.04"):
        row = next(line for line in table if line.startswith(f"| {label} |"))
        assert row.count("±") == 4  # accuracy, KL, entropy, distinct
    assert (out / "trajectories.png").read_bytes().startswith(b"\x89PNG")
    results = json.loads((out / "results.json").read_text())
    assert [(run["label"], run["seed"]) for run in results["runs"]] == [("GRPO b=0.04", 0), ("ADRPO b0=0.04", 0)]
    for run in results["runs"]:
        trajectory = run["trajectory"]
        assert [point["step"] for point in trajectory] == [0, 1, 2]
        for point in trajectory:
            assert {"reward", "kl", "entropy", "diversity"} <= point.keys()
            assert 0.0 <= point["reward"] <= 1.0 and 0.0 < point["diversity"] <= 1.0 and point["entropy"] > 0
        assert trajectory[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference at step 0
        assert len(run["train_log"]) == 2
    adrpo_log = results["runs"][1]["train_log"]
    assert all(row["adrpo/coef_mean"] is not None for row in adrpo_log)
    assert all(row["adrpo/coef_mean"] is None for row in results["runs"][0]["train_log"])  # stock GRPO logs none
