"""The `adrpo` command line on the tiny digits task: compare writes its report, overrides
take effect, train resumes, configuration errors name their field."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import yaml

from adrpo import cli
from adrpo.experiments.backends import backend_for
from adrpo.experiments.spec import ExperimentSpec
from adrpo.flow.config import FlowConfig
from adrpo.flow.trainer import FlowTrainer
from conftest import TINY_SETTINGS

TRAINER = {
    "num_steps": 4,
    "prompts_per_step": 2,
    "group_size": 4,
    "sampling_steps": 4,
    "learning_rate": 1e-3,
    "checkpoint_steps": 0,
    "report_to": ["none"],
    "progress_bar": False,
}


def task_args(cache: Path) -> dict:
    return {"settings": dict(TINY_SETTINGS), "cache": str(cache), "eval_samples": 4, "eval_sampling_steps": 4}


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
    return path


def compare_yaml(tmp_path: Path, cache: Path, **changes) -> Path:
    values = {
        "task": "digits",
        "task_args": task_args(cache),
        "trainer": dict(TRAINER),
        "eval": {"steps": 2},
        "seeds": [0],
        "workers": 1,
        "output_dir": str(tmp_path / "out"),
        "methods": [{"label": "ADRPO", "method": "adrpo"}, {"label": "RAFT", "method": "raft", "raft_fraction": 0.5}],
        **changes,
    }
    return write_yaml(tmp_path / "compare.yaml", values)


def test_compare_writes_table_plot_and_json(tmp_path, digits_cache, capsys):
    cli.main(["fm", "compare", "--config", str(compare_yaml(tmp_path, digits_cache))])
    out = tmp_path / "out"

    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Method" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["Base", "ADRPO", "RAFT"]
    assert all(row.count("±") == 3 for row in rows)
    assert "over 1 seeds" in table
    assert table.strip().splitlines()[0] in capsys.readouterr().out  # also printed

    png = (out / "tradeoff.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"Base", "ADRPO", "RAFT"}
    for metrics in results["summary"].values():
        assert set(metrics) == {"reward", "diversity", "w2"}
        assert all(set(stat) == {"mean", "std"} and stat["std"] == 0.0 for stat in metrics.values())
    assert [(run["label"], run["seed"]) for run in results["runs"]] == [("ADRPO", 0), ("RAFT", 0)]
    for run in results["runs"]:
        trajectory = run["trajectory"]
        assert [point["step"] for point in trajectory] == [0, 2, 4]
        assert trajectory[0]["w2"] == 0.0 and trajectory[-1]["w2"] > 0.0
        assert results["summary"][run["label"]]["reward"]["mean"] == trajectory[-1]["reward"]
        assert run["config"]["num_steps"] == 4 and run["config"]["seed"] == 0
    # Both runs start from the same base model and evaluation noise: one base row.
    first = [run["trajectory"][0] for run in results["runs"]]
    assert first[0] == first[1]
    assert results["summary"]["Base"]["reward"]["mean"] == first[0]["reward"]
    assert results["summary"]["Base"]["w2"]["mean"] == 0.0
    assert results["runs"][1]["config"]["raft_fraction"] == 0.5
    for run in results["runs"]:
        run_dir = Path(run["directory"])
        assert run_dir.parent.parent == out / "runs" and run_dir.parent.name == f"{run['label']}-{run['config_hash']}"
        assert (run_dir / "metrics.jsonl").exists() and (run_dir / "checkpoints" / "step-00000004").is_dir()
        assert json.loads((run_dir / "result.json").read_text()) == run  # the file that marks the run complete


def test_set_overrides_take_effect(tmp_path, digits_cache):
    config = compare_yaml(tmp_path, digits_cache)
    cli.main([
        "fm", "compare", "--config", str(config),
        "--set", "trainer.num_steps=2",
        "--set", "methods=[{label: ADRPO, method: adrpo, beta0: 0.5}]",
        "--output-dir", str(tmp_path / "other"),
    ])
    results = json.loads((tmp_path / "other" / "results.json").read_text())
    (run,) = results["runs"]
    assert [point["step"] for point in run["trajectory"]] == [0, 2]
    assert run["config"]["num_steps"] == 2 and run["config"]["beta0"] == 0.5
    assert run["config"]["adv_clip_max"] == 0.5  # derived from the overridden beta0
    assert not (tmp_path / "out").exists()


def test_apply_overrides_parses_values_as_yaml():
    values = cli.apply_overrides({"trainer": {"num_steps": 3}}, ["trainer.learning_rate=1.0e-3", "trainer.lora_target_modules=[a, b]",
                                                                 "seeds=[0, 1]", "new.nested.key=true"])
    assert values == {"trainer": {"num_steps": 3, "learning_rate": 1e-3, "lora_target_modules": ["a", "b"]},
                      "seeds": [0, 1], "new": {"nested": {"key": True}}}
    with pytest.raises(ValueError, match="key=value"):
        cli.apply_overrides({}, ["trainer.num_steps"])
    with pytest.raises(ValueError, match="'trainer' is not a mapping"):
        cli.apply_overrides({"trainer": 3}, ["trainer.num_steps=2"])


def test_set_learning_rate_in_exponent_notation(tmp_path, digits_cache, capsys):
    config = write_yaml(tmp_path / "train.yaml", {
        "task": "digits", "task_args": task_args(digits_cache),
        "trainer": {**TRAINER, "num_steps": 1, "output_dir": str(tmp_path / "run")},
    })
    # YAML 1.1 reads 1e-3 (no dot) as text; FlowConfig converts it to the float it means
    cli.main(["fm", "train", "--config", str(config), "--set", "trainer.learning_rate=1e-3"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1


def test_train_then_resume_continues_from_the_checkpoint(tmp_path, digits_cache, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    config = write_yaml(tmp_path / "train.yaml", {
        "task": "digits",
        "task_args": task_args(digits_cache),
        "eval_steps": 2,
        "trainer": {**TRAINER, "num_steps": 2, "checkpoint_steps": 2, "output_dir": str(run_dir)},
    })
    cli.main(["fm", "train", "--config", str(config)])
    assert f"run directory: {run_dir}" in capsys.readouterr().out
    first_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in first_rows] == [0, 1, 2]

    steps_run = []
    real_step = FlowTrainer.step

    def counting_step(self, **kwargs):
        steps_run.append(self.state.step)
        return real_step(self, **kwargs)

    monkeypatch.setattr(FlowTrainer, "step", counting_step)
    cli.main(["fm", "train", "--config", str(config), "--resume", "--set", "trainer.num_steps=4"])

    assert steps_run == [2, 3]  # continued after step 2; steps 1 and 2 were not rerun
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert rows[:3] == first_rows
    assert "eval/reward" in rows[-1] and rows[-1]["eval/w2"] > 0.0
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002", "step-00000004"]
    out = capsys.readouterr().out
    assert "step     4: reward" in out


def test_unknown_trainer_field_exits_2_naming_it(tmp_path, digits_cache, capsys):
    trainer = {**TRAINER, "bogus_field": 1}
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "compare", "--config", str(compare_yaml(tmp_path, digits_cache, trainer=trainer))])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "adrpo: error:" in err and "bogus_field" in err and "'ADRPO'" in err
    assert not (tmp_path / "out").exists()  # refused before any run started


def test_unknown_top_level_compare_field_exits_2_naming_it(tmp_path, digits_cache, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "compare", "--config", str(compare_yaml(tmp_path, digits_cache, sedes=[1]))])
    assert info.value.code == 2
    assert "['sedes']" in capsys.readouterr().err


def test_unknown_fields_in_train_config_are_refused(tmp_path, digits_cache, capsys):
    values = {"task": "digits", "task_args": task_args(digits_cache), "trainer": {**TRAINER, "lr": 0.1}}
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "train", "--config", str(write_yaml(tmp_path / "a.yaml", values))])
    assert info.value.code == 2 and "['lr']" in capsys.readouterr().err

    values = {"task": "digits", "trainer": dict(TRAINER), "eval_step": 5}
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "train", "--config", str(write_yaml(tmp_path / "b.yaml", values))])
    assert info.value.code == 2 and "['eval_step']" in capsys.readouterr().err


def test_config_and_preset_are_exclusive_and_presets_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "compare"])
    assert info.value.code == 2 and "exactly one of --config or --preset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "compare", "--preset", "nope"])
    assert info.value.code == 2
    assert re.search("unknown preset 'nope'.*digits-quick", capsys.readouterr().err)
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "explode"])
    assert info.value.code == 2  # argparse


def test_presets_lists_bundled_presets(capsys):
    cli.main(["presets"])
    listed = capsys.readouterr().out.split()
    assert "digits-quick" in listed and "digits" in listed and "digits-train" in listed
    assert listed == sorted(listed)


def test_bundled_presets_are_valid():
    for name in cli.list_presets():
        values = cli.load_yaml(cli.preset_path(name))
        if name.startswith("grpo-"):  # a `grpo train` recipe: known keys, and its TRL config builds
            from adrpo.llm.config import ADRPOConfig
            from adrpo.llm.recipe import KEYS

            assert set(values) <= set(KEYS) and values["trainer"] == "adrpo"
            args = {**values["args"], "bf16": False, "use_cpu": True}
            assert ADRPOConfig(**args).beta == 0.04
            continue
        if values.get("task") in ("arithmetic", "audio_qa"):  # a `grpo compare` config: every method's TRL config builds
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                spec = ExperimentSpec.from_dict(values)
                for configuration in spec.configurations():
                    backend_for(spec).resolve(spec, configuration, seed=0)
            assert spec.kind == "llm" and {m["trainer"] for m in spec.methods} == {"grpo", "adrpo"}
            # exactly the ADRPO configurations whose clip reaches above beta0 warn (negative coefficients)
            above = [c.overrides["adv_clip_max"] for c in spec.configurations()
                     if c.overrides.get("adv_clip_max", 0) > c.overrides.get("beta", spec.trainer.get("beta", 0.04))]
            clip_warnings = [str(w.message).split(")")[0] for w in caught if str(w.message).startswith("adv_clip_max")]
            assert clip_warnings == [f"adv_clip_max ({value}" for value in above]
            continue
        if "methods" not in values:  # a single-run `fm train` config
            assert set(values) <= {"task", "task_args", "trainer", "eval_steps"}
            FlowConfig.from_dict(values["trainer"])
            if values.get("task") == "text_to_image":
                from adrpo.tasks.text_to_image import check_reward_entry

                reward = values["task_args"]["reward"]
                for entry in reward if isinstance(reward, list) else [reward]:
                    check_reward_entry(entry, None)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spec = ExperimentSpec.from_dict(values)
            for configuration in spec.configurations():
                backend_for(spec).resolve(spec, configuration, seed=0)
        assert spec.methods and spec.seeds
        # Exactly the ADRPO configurations whose clip reaches above beta0 (negative coefficients) warn.
        resolved = [{**spec.trainer, **c.overrides} for c in spec.configurations()]
        above = [r["adv_clip_max"] for r in resolved
                 if r.get("method", "adrpo") == "adrpo" and r.get("adv_clip_max", 0) > r.get("beta0", 1.0)]
        assert [str(w.message).split(")")[0] for w in caught] == [f"adv_clip_max ({value}" for value in above]
        assert (name == "digits-clip-ablation") <= bool(above)  # its 2×β0 row is one of them


def help_text(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_each_command_offers_and_takes_only_its_kind_of_preset(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help at the terminal width (and at hyphens)
    offered = {command: re.search(r"--preset PRESET\s+a bundled preset \(([^)]*)\)", help_text(capsys, command.split())).group(1).split(", ")
               for command in ("fm train", "fm export", "fm compare", "grpo", "grpo train", "grpo compare", "sweep")}
    assert offered["fm train"] == offered["fm export"] == ["digits-train", "flux-dev", "flux-dev-full-fsdp2", "flux-tiny", "sd3-medium", "sd3-tiny"]
    assert offered["grpo"] == offered["grpo train"] == [name for name in cli.list_presets() if name.startswith("grpo-")]
    assert offered["fm compare"] == ["digits", "digits-clip-ablation", "digits-moving", "digits-quick", "digits-sweep", "digits-sweep-quick"]
    assert offered["grpo compare"] == ["arithmetic", "arithmetic-moving", "arithmetic-quick", "arithmetic-sweep", "arithmetic-sweep-quick",
                                       "audio-qa", "audio-qa-moving"]
    assert offered["sweep"] == sorted(offered["fm compare"] + offered["grpo compare"])
    assert sorted(name for names in (offered["fm train"], offered["grpo"], offered["sweep"]) for name in names) == cli.list_presets()

    for argv, needle in ((["fm", "train", "--preset", "grpo-smollm2"], "preset 'grpo-smollm2' is for `adrpo grpo train`; this command takes: digits-train,"),
                         (["fm", "compare", "--preset", "arithmetic-quick"], "is for `adrpo grpo compare` or `adrpo sweep`; this command takes: digits,"),
                         (["grpo", "train", "--preset", "digits-train"], "preset 'digits-train' is for `adrpo fm train`; this command takes: grpo-"),
                         (["sweep", "--preset", "sd3-tiny"], "preset 'sd3-tiny' is for `adrpo fm train`; this command takes: arithmetic,")):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and needle in err and err.count("\n") == 1, err


def test_experiment_options_have_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    for command in (["fm", "compare"], ["grpo", "compare"], ["sweep"]):
        text = help_text(capsys, command)
        assert re.search(r"--output-dir OUTPUT_DIR\s+where the table, plots, results.json and runs/ go", text)
        assert re.search(r"--seeds SEED \[SEED \.\.\.\]\s+the seeds to run", text)


def test_train_config_types_are_checked_by_field(tmp_path, digits_cache, capsys):
    for changes, piece in (({"eval_steps": "often"}, "eval_steps must be a int, got 'often'"),
                           ({"task_args": [1]}, "task_args must be a dict"),
                           ({"eval_steps": -1}, "eval_steps must be >= 0")):
        values = {"task": "digits", "task_args": task_args(digits_cache), "trainer": dict(TRAINER), **changes}
        with pytest.raises(SystemExit) as info:
            cli.main(["fm", "train", "--config", str(write_yaml(tmp_path / "a.yaml", values))])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and piece in err, err


def test_errors_other_than_configuration_keep_their_traceback(tmp_path, digits_cache, monkeypatch, capsys):
    """A RewardError (or any library error) mid-run is not a one-line configuration error: it
    propagates with its traceback instead of being printed as `adrpo: error:` and exit 2."""
    from adrpo.rewards.base import RewardError

    def failing_step(self, **kwargs):
        raise RewardError("method='adrpo', step 3, reward 'digits': sample 5 got NaN")

    monkeypatch.setattr(FlowTrainer, "step", failing_step)
    values = {"task": "digits", "task_args": task_args(digits_cache), "trainer": {**TRAINER, "output_dir": str(tmp_path / "run")}}
    with pytest.raises(RewardError, match="step 3"):
        cli.main(["fm", "train", "--config", str(write_yaml(tmp_path / "a.yaml", values))])
    assert "adrpo: error:" not in capsys.readouterr().err

    monkeypatch.setattr(FlowTrainer, "step", lambda self, **kwargs: {}["missing"])
    values["trainer"]["output_dir"] = str(tmp_path / "run-b")  # the first run's directory holds that run now
    with pytest.raises(KeyError):
        cli.main(["fm", "train", "--config", str(write_yaml(tmp_path / "b.yaml", values))])


def test_a_run_not_configured_for_deepspeed_does_not_import_it(tmp_path, digits_cache):
    """DeepSpeed is installed by the dev set-up; importing it logs "Setting accelerator to CPU"
    on machines without CUDA. A plain `fm train` run must neither import it nor print that."""
    import os
    import subprocess
    import sys

    values = {"task": "digits", "task_args": task_args(digits_cache), "trainer": {**TRAINER, "num_steps": 1, "output_dir": str(tmp_path / "run")}}
    config = write_yaml(tmp_path / "a.yaml", values)
    script = (f"import sys; from adrpo import cli; cli.main(['fm', 'train', '--config', {str(config)!r}]); "
              "print('deepspeed imported:', any(m == 'deepspeed' or m.startswith('deepspeed.') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ADRPO_CACHE": str(digits_cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deepspeed imported: False" in result.stdout
    assert "Setting accelerator" not in result.stderr and "Setting accelerator" not in result.stdout


def test_exponents_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    """YAML 1.1 (PyYAML's default) reads 1e-3 as the string '1e-3'; a learning rate must not reach the trainer as text."""
    path = tmp_path / "c.yaml"
    path.write_text("trainer: {learning_rate: 1e-3, beta: -4E-2, steps: 10, name: 1e, date: 2026-12-01}\n")
    trainer = cli.load_yaml(path)["trainer"]
    assert trainer["learning_rate"] == 0.001 and trainer["beta"] == -0.04 and trainer["steps"] == 10
    assert trainer["name"] == "1e"  # not a number
    assert cli.apply_overrides({}, ["trainer.learning_rate=6e-4"])["trainer"]["learning_rate"] == 6e-4
