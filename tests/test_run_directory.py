"""One run per run directory (adrpo.flow.run_directory): a fresh start refuses a directory that
holds a run unless told to overwrite it, every start saves config.json, and a resume refuses
result-changing settings other than the saved ones."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from adrpo import cli
from adrpo.errors import ConfigError
from adrpo.flow import run_directory
from adrpo.flow.config import FlowConfig
from adrpo.flow.trainer import FlowTrainer
from conftest import PROMPTS, TINY_SETTINGS, make_config, params_of, target_reward, tiny_model

# Every compared FlowConfig field, with another valid value than BASE's. A new FlowConfig field fails
# test_every_field_is_compared_or_declared_result_neutral until it is added here or to RESULT_NEUTRAL.
COMPARED = {
    "method": "orw_cfm_w2", "beta0": 2.0, "adv_clip_min": -0.5, "adv_clip_max": 0.5, "advantage_baseline": "batch",
    "advantage_scale": "none", "orw_tau": 1.0, "orw_alpha": 0.5, "orw_normalize": True, "raft_fraction": 0.5,
    "dpo_beta": 50.0, "sync_ref_model": True, "ref_model_mixup_alpha": 0.5, "ref_model_sync_steps": 64,
    "prompts_per_step": 4, "group_size": 2, "sampling_steps": 10, "guidance_scale": 2.0, "time_shift": 3.0,
    "micro_batch_size": 16, "sampler_refresh_every": 2, "learning_rate": 1e-4, "weight_decay": 0.01,
    "max_grad_norm": None, "seed": 1, "lora_rank": 4, "lora_alpha": 8.0, "lora_target_modules": ["proj", "proj_in"],
}
NEUTRAL = {
    "output_dir": "elsewhere", "logging_steps": 5, "checkpoint_steps": 10, "keep_checkpoints": 5,
    "report_to": ["tensorboard"], "progress_bar": True, "monitor": "stop", "monitor_thresholds": {"w2_max": 1.0},
    "gradient_checkpointing": True, "fsdp_gather_for_sampling": False,
}
# explicit clip bounds, so that another beta0 changes beta0 alone
BASE = dict(output_dir="run", report_to=["none"], progress_bar=False, adv_clip_min=-1.0, adv_clip_max=1.0, num_steps=10)


def saved(config: FlowConfig) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def tree_digest(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*")) if f.is_file()}


def trainer_for(run: Path, **overrides) -> FlowTrainer:
    values = {"num_steps": 6, "checkpoint_steps": 3, "keep_checkpoints": 1, **overrides}
    return FlowTrainer(make_config(run, **values), tiny_model(), target_reward, PROMPTS)


# ----------------------------------------------------------------- which settings a resume compares
def test_every_field_is_compared_or_declared_result_neutral():
    fields = {f.name for f in dataclasses.fields(FlowConfig)}
    classified = COMPARED.keys() | run_directory.RESULT_NEUTRAL.keys() | set(run_directory.MAY_GROW)
    assert not fields - classified, f"neither compared nor declared result-neutral: {sorted(fields - classified)}"
    assert not classified - fields
    assert not COMPARED.keys() & run_directory.RESULT_NEUTRAL.keys()
    assert NEUTRAL.keys() == run_directory.RESULT_NEUTRAL.keys()


@pytest.mark.parametrize("field", COMPARED)
def test_each_compared_field_that_differs_is_named_with_both_values(field):
    base = FlowConfig(**BASE)
    changed = FlowConfig(**{**BASE, field: COMPARED[field]})
    expected = (field, saved(base)[field], saved(changed)[field])
    assert expected in run_directory.changed_settings(saved(base), changed)


@pytest.mark.parametrize("field", NEUTRAL)
def test_result_neutral_fields_may_differ(field):
    base = FlowConfig(**BASE)
    assert run_directory.changed_settings(saved(base), FlowConfig(**{**BASE, field: NEUTRAL[field]})) == []


def test_num_steps_may_grow_but_not_shrink():
    base = saved(FlowConfig(**BASE))
    assert run_directory.changed_settings(base, FlowConfig(**{**BASE, "num_steps": 20})) == []
    assert run_directory.changed_settings(base, FlowConfig(**{**BASE, "num_steps": 5})) == [("num_steps", 10, 5)]


def test_a_field_missing_from_an_older_config_json_is_compared_with_its_resolved_default():
    old = saved(FlowConfig(**{**BASE, "beta0": 0.5, "adv_clip_min": None, "adv_clip_max": None}))
    for name in ("adv_clip_min", "adv_clip_max", "orw_normalize"):  # fields "added later"
        del old[name]
    old["a_removed_field"] = 3
    same = FlowConfig(**{**BASE, "beta0": 0.5, "adv_clip_min": None, "adv_clip_max": None})
    assert run_directory.changed_settings(old, same) == []  # the clip resolves to ±0.5 from the saved beta0
    assert run_directory.changed_settings(old, dataclasses.replace(same, orw_normalize=True)) == [("orw_normalize", False, True)]


# ----------------------------------------------------------------- fresh starts
def test_a_fresh_start_saves_its_configuration_atomically(tmp_path):
    trainer = trainer_for(tmp_path, num_steps=1)
    trainer.train()
    assert json.loads((tmp_path / "config.json").read_text()) == saved(trainer.config)
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_fresh_start_into_a_run_is_refused_naming_the_directory_and_both_flags(tmp_path):
    trainer_for(tmp_path).train()
    before = tree_digest(tmp_path)
    with pytest.raises(ConfigError) as raised:
        trainer_for(tmp_path, method="raft").train()
    message = str(raised.value)
    assert str(tmp_path) in message and "--resume" in message and "--overwrite" in message
    assert "config.json, metrics.jsonl, checkpoints/" in message
    assert tree_digest(tmp_path) == before  # nothing written


def test_overwrite_clears_the_old_run_and_trains_as_in_a_fresh_directory(tmp_path):
    old = tmp_path / "run"
    trainer_for(old, num_steps=6, monitor_thresholds={"w2_max": 1e-9}).train()  # checkpoint 6, alarms.jsonl
    assert (old / "alarms.jsonl").exists()
    new = trainer_for(old, num_steps=3)
    rows = new.train(overwrite=True)
    fresh = trainer_for(tmp_path / "fresh", num_steps=3)
    assert rows == fresh.train()
    # Without the overwrite the old step 6 would have stayed, and pruning (keep 1) deleted step 3.
    assert sorted(p.name for p in (old / "checkpoints").iterdir()) == ["step-00000003"]
    assert not (old / "alarms.jsonl").exists()
    assert json.loads((old / "config.json").read_text())["num_steps"] == 3


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(ConfigError, match="exclude each other"):
        trainer_for(tmp_path).train(resume_from_checkpoint=True, overwrite=True)


def test_a_directory_with_only_tracker_files_is_no_run(tmp_path):
    (tmp_path / "adrpo").mkdir()
    (tmp_path / "adrpo" / "events.out.tfevents.1").write_bytes(b"x")
    (tmp_path / "checkpoints").mkdir()  # empty
    assert run_directory.run_files(tmp_path) == []
    trainer_for(tmp_path, num_steps=1).train()


# ----------------------------------------------------------------- resumes
@pytest.mark.parametrize("change, named", [
    ({"method": "raft"}, "method: 'adrpo' -> 'raft'"),
    ({"group_size": 2}, "group_size: 4 -> 2"),
    ({"learning_rate": 1e-3}, "learning_rate: 0.01 -> 0.001"),
    ({"num_steps": 2}, "num_steps: 6 -> 2 (num_steps may only grow)"),
])
def test_resume_with_a_changed_result_setting_is_refused_by_name_and_changes_nothing(tmp_path, change, named):
    trainer_for(tmp_path, num_steps=6).train()
    before = tree_digest(tmp_path)
    with pytest.raises(ConfigError, match="holds a run saved with other settings") as raised:
        trainer_for(tmp_path, **{"num_steps": 9, **change}).train(resume_from_checkpoint=True)
    assert named in str(raised.value) and "--allow-change" in str(raised.value)
    assert tree_digest(tmp_path) == before


def test_resume_with_more_steps_and_neutral_changes_continues_and_updates_config_json(tmp_path):
    trainer_for(tmp_path, num_steps=3).train()
    resumed = trainer_for(tmp_path, num_steps=6, logging_steps=2, keep_checkpoints=2)
    rows = resumed.train(resume_from_checkpoint=True)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 6]
    assert json.loads((tmp_path / "config.json").read_text())["num_steps"] == 6
    straight = trainer_for(tmp_path / "straight", num_steps=6)
    straight.train()
    expected = params_of(straight.policy)
    assert all(value.equal(expected[name]) for name, value in params_of(resumed.policy).items())


def test_an_allowed_change_resumes_with_a_warning(tmp_path):
    trainer_for(tmp_path, num_steps=3).train()
    with pytest.warns(UserWarning, match=r"resuming with changed settings \(allowed\): micro_batch_size: None -> 2"):
        rows = trainer_for(tmp_path, micro_batch_size=2).train(resume_from_checkpoint=True, allow_config_changes=["micro_batch_size"])
    assert rows[-1]["step"] == 6
    with pytest.raises(ConfigError, match=r"\['micro_batchsize'\] are not FlowConfig fields"):
        trainer_for(tmp_path, num_steps=9).train(resume_from_checkpoint=True, allow_config_changes=["micro_batchsize"])


def test_a_run_without_config_json_resumes_unchecked_and_gets_one(tmp_path):
    trainer_for(tmp_path, num_steps=3).train()
    (tmp_path / "config.json").unlink()  # a run from before config.json
    rows = trainer_for(tmp_path, learning_rate=5e-3).train(resume_from_checkpoint=True)
    assert rows[-1]["step"] == 6
    assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 5e-3


def test_resume_without_a_checkpoint_is_a_fresh_start_under_any_settings(tmp_path):
    trainer_for(tmp_path, num_steps=2).train()  # checkpoint_steps 3: only the final step 2 is saved
    (tmp_path / "checkpoints" / "step-00000002").rename(tmp_path / "checkpoints" / "broken")  # as if it crashed before
    rows = trainer_for(tmp_path, num_steps=2, method="raft").train(resume_from_checkpoint=True)
    assert [row["step"] for row in rows] == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "raft"


# ----------------------------------------------------------------- the command line
TRAINER = {"num_steps": 2, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 4, "learning_rate": 1e-3,
           "checkpoint_steps": 0, "report_to": ["none"], "progress_bar": False}


def test_fm_train_refuses_a_second_run_and_overwrite_and_allow_change_are_flags(tmp_path, digits_cache, capsys):
    run = tmp_path / "run"
    values = {"task": "digits",
              "task_args": {"settings": dict(TINY_SETTINGS), "cache": str(digits_cache), "eval_samples": 4, "eval_sampling_steps": 4},
              "trainer": {**TRAINER, "output_dir": str(run)}}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(values))
    cli.main(["fm", "train", "--config", str(config)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(["fm", "train", "--config", str(config), "--set", "trainer.method=raft"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{run} already holds a run" in err and "--resume" in err and "--overwrite" in err
    with pytest.raises(SystemExit):
        cli.main(["fm", "train", "--config", str(config), "--resume", "--set", "trainer.method=raft", "--set", "trainer.num_steps=3"])
    assert "method: 'adrpo' -> 'raft'" in capsys.readouterr().err
    cli.main(["fm", "train", "--config", str(config), "--resume", "--set", "trainer.micro_batch_size=4",
              "--set", "trainer.num_steps=3", "--allow-change", "micro_batch_size"])
    assert json.loads((run / "config.json").read_text())["num_steps"] == 3
    cli.main(["fm", "train", "--config", str(config), "--overwrite", "--set", "trainer.method=raft"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert json.loads((run / "config.json").read_text())["method"] == "raft"
