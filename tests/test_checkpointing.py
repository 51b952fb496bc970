"""Checkpoints that fail to load are named and skipped; interrupted overwrites are repaired.

Every resume test starts from a copy of one 6-step run with checkpoints at steps 3 and 6,
damages it on purpose, and compares the resumed run with torch.equal against a run resumed
directly from the intact checkpoint: training is deterministic, so a fallback that leaves any
state of the broken checkpoint behind (weights, optimizer moments, RNG, trainer state) shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adrpo.errors import ConfigError
from adrpo.flow import checkpointing
from adrpo.flow.trainer import FlowTrainer
from conftest import PROMPTS, make_config, params_of, target_reward, tiny_model

STEP3, STEP6 = "step-00000003", "step-00000006"


def trainer_for(run: Path, num_steps: int = 9, **overrides) -> FlowTrainer:
    return FlowTrainer(make_config(run, num_steps=num_steps, checkpoint_steps=3, **overrides), tiny_model(), target_reward, PROMPTS)


def tree_digest(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*")) if f.is_file()}


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def assert_same_params(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """A 6-step run (checkpoints at steps 3 and 6): its folder, final weights and rows."""
    run = tmp_path_factory.mktemp("pristine")
    trainer = trainer_for(run, num_steps=6)
    rows = trainer.train()
    assert names(run / "checkpoints") == [STEP3, STEP6]
    return {"run": run, "params": params_of(trainer.policy), "rows": rows}


@pytest.fixture(scope="module")
def direct_from_step_3(pristine, tmp_path_factory) -> dict:
    """The pristine run resumed explicitly from its step 3 and trained to step 9."""
    run = tmp_path_factory.mktemp("direct")
    shutil.copytree(pristine["run"], run, dirs_exist_ok=True)
    trainer = trainer_for(run)
    rows = trainer.train(resume_from_checkpoint=str(run / "checkpoints" / STEP3))
    return {"params": params_of(trainer.policy), "rows": rows, "generator": trainer.state.generator.get_state()}


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    """A private copy of the pristine run."""
    copy = tmp_path / "run"
    shutil.copytree(pristine["run"], copy)
    return copy


def truncate(file: Path) -> None:
    os.truncate(file, 1000)


def zero_fill(file: Path) -> None:
    """Same size, no content: passes the manifest's size check, fails only when loaded."""
    file.write_bytes(bytes(file.stat().st_size))


def delete(file: Path) -> None:
    file.unlink()


def fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "cannot be loaded" in str(w.message)]


# ----------------------------------------------------------------- fallback to the newest intact one
DAMAGES = [
    # (file in step 6, damage, keep the manifests, what the warning names)
    ("model.safetensors", truncate, True, r"model\.safetensors is 1000 bytes, manifest\.json says \d+"),
    ("optimizer.bin", truncate, True, r"optimizer\.bin is 1000 bytes, manifest\.json says \d+"),
    ("optimizer.bin", delete, True, r"optimizer\.bin is missing"),
    ("random_states_0.pkl", delete, True, r"random_states_0\.pkl is missing"),
    # Without manifests (checkpoints written before them) only the load itself finds the damage.
    ("model.safetensors", truncate, False, r"model\.safetensors cannot be read \(SafetensorError: .*incomplete metadata"),
    ("optimizer.bin", truncate, False, r"optimizer\.bin cannot be read \(not a whole torch\.save archive"),
    ("optimizer.bin", delete, False, r"FileNotFoundError: .*optimizer\.bin"),
    ("random_states_0.pkl", zero_fill, False, r"random_states_0\.pkl cannot be read"),
    ("custom_checkpoint_0.pkl", zero_fill, True, r"custom_checkpoint_0\.pkl cannot be read \(not a whole torch\.save archive"),
]


@pytest.mark.parametrize("file, damage, manifests, named", DAMAGES,
                         ids=[f"{f}-{d.__name__}-{'manifest' if m else 'legacy'}" for f, d, m, _ in DAMAGES])
def test_broken_newest_checkpoint_is_named_set_aside_and_resume_continues_from_the_older_one(
        run, direct_from_step_3, file, damage, manifests, named):
    root = run / "checkpoints"
    if not manifests:
        for checkpoint in checkpointing.list_checkpoints(root):
            (checkpoint / checkpointing.MANIFEST_NAME).unlink()
    damage(root / STEP6 / file)
    damaged = tree_digest(root / STEP6)

    trainer = trainer_for(run)
    with pytest.warns(UserWarning) as record:
        rows = trainer.train(resume_from_checkpoint=True)

    [message] = fallback_warnings(record)
    assert message.startswith(f"checkpoint {root / STEP6} cannot be loaded: ")
    assert f"resuming from {STEP3}, the newest intact checkpoint, and moved the broken one to broken-{STEP6}" in message
    assert re.search(named, message), message
    # The same weights, metrics and random stream as resuming from step 3 on purpose.
    assert_same_params(params_of(trainer.policy), direct_from_step_3["params"])
    assert rows == direct_from_step_3["rows"]
    assert [row["step"] for row in rows] == list(range(1, 10))
    assert torch.equal(trainer.state.generator.get_state(), direct_from_step_3["generator"])
    # The broken checkpoint is kept untouched for inspection, outside the list of checkpoints.
    assert names(root) == [f"broken-{STEP6}", STEP6, "step-00000009"]
    assert tree_digest(root / f"broken-{STEP6}") == damaged


def test_fallback_after_a_half_load_overwrites_every_restored_state(run, pristine, direct_from_step_3, monkeypatch):
    root = run / "checkpoints"
    # Same size, so the manifest passes: accelerate restores step 6's model, optimizer and RNG
    # and fails only at the trainer state, which it loads last.
    zero_fill(root / STEP6 / "custom_checkpoint_0.pkl")
    trainer = trainer_for(run)
    real_load_state = trainer.accelerator.load_state
    after_failed_load: list[dict[str, torch.Tensor]] = []

    def recording_load_state(input_dir, **kwargs):
        try:
            return real_load_state(input_dir, **kwargs)
        except Exception:
            after_failed_load.append(params_of(trainer.policy))
            after_failed_load.append({k: v.clone() for k, v in trainer.optimizer.state_dict()["state"][0].items()})
            raise

    monkeypatch.setattr(trainer.accelerator, "load_state", recording_load_state)
    with pytest.warns(UserWarning, match=r"custom_checkpoint_0\.pkl cannot be read"):
        rows = trainer.train(resume_from_checkpoint=True)

    # The failed attempt did leave step 6's weights and Adam moments in the trainer ...
    half_params, half_adam = after_failed_load
    step6 = load_file(pristine["run"] / "checkpoints" / STEP6 / "model.safetensors")
    assert half_params and all(torch.equal(value, step6[name]) for name, value in half_params.items())
    assert torch.equal(half_adam["step"], torch.tensor(6.0))
    # ... and the fallback to step 3 replaced all of it: bitwise the direct resume.
    assert_same_params(params_of(trainer.policy), direct_from_step_3["params"])
    assert rows == direct_from_step_3["rows"]
    assert torch.equal(trainer.state.generator.get_state(), direct_from_step_3["generator"])


def test_lora_fallback_after_a_half_load_restores_the_older_adapters(tmp_path):
    lora = dict(lora_rank=2, lora_target_modules=["proj_in", "proj"], sampler_refresh_every=2)

    def lora_trainer(run: Path, num_steps: int) -> FlowTrainer:
        return FlowTrainer(make_config(run, num_steps=num_steps, checkpoint_steps=2, **lora), tiny_model(), target_reward, PROMPTS)

    lora_trainer(tmp_path / "a", 4).train()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    direct = lora_trainer(tmp_path / "b", 6)
    direct_rows = direct.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoints" / "step-00000002"))

    # The adapters of step 4 load (the LoRA hook copies them in), then its optimizer fails.
    zero_fill(tmp_path / "a" / "checkpoints" / "step-00000004" / "optimizer.bin")
    resumed = lora_trainer(tmp_path / "a", 6)
    with pytest.warns(UserWarning, match=r"step-00000004 cannot be loaded: optimizer\.bin cannot be read"):
        rows = resumed.train(resume_from_checkpoint=True)
    assert_same_params(params_of(resumed.policy), params_of(direct.policy))
    assert rows == direct_rows
    for name, value in direct.state.snapshot.items():
        assert torch.equal(resumed.state.snapshot[name], value), name


def test_when_no_checkpoint_loads_resume_raises_naming_each_and_changes_nothing(run):
    root = run / "checkpoints"
    truncate(root / STEP6 / "model.safetensors")
    delete(root / STEP3 / "optimizer.bin")
    before = tree_digest(run)

    trainer = trainer_for(run)
    with pytest.raises(ConfigError) as raised:
        trainer.train(resume_from_checkpoint=True)

    message = str(raised.value)
    assert message.startswith(f"no checkpoint under {root} can be loaded, so the run cannot resume (")
    assert f"{STEP6}: model.safetensors is 1000 bytes" in message
    assert f"{STEP3}: optimizer.bin is missing" in message
    assert "to start fresh, overwrite the run (--overwrite, train(overwrite=True))" in message
    assert tree_digest(run) == before  # nothing moved, metrics.jsonl not truncated
    rows = trainer_for(run).train(overwrite=True)  # what the message offers
    assert [row["step"] for row in rows] == list(range(1, 10))
    assert names(root) == [STEP6, "step-00000009"]


def test_lora_settings_mismatch_is_reported_not_hidden_by_the_fallback(tmp_path):
    lora = dict(lora_rank=2, lora_target_modules=["proj_in", "proj"])
    trainer_for(tmp_path, num_steps=3, **lora).train()
    other = trainer_for(tmp_path, num_steps=6, lora_rank=2, lora_target_modules=["proj"])
    with pytest.raises(ConfigError, match=r"lora_target_modules: \['proj_in', 'proj'\] -> \['proj'\]"):
        other.train(resume_from_checkpoint=True)
    # Let through the run directory's check, the checkpoint itself refuses the other adapters.
    with pytest.raises(ConfigError, match=rf"{STEP3}: ValueError: checkpoint .*weights do not match .*other LoRA settings"):
        other.train(resume_from_checkpoint=True, allow_config_changes=["lora_target_modules"])
    assert names(tmp_path / "checkpoints") == [STEP3]


@pytest.mark.parametrize("damage", [truncate, zero_fill], ids=["truncated", "zero_filled"])
def test_an_explicit_broken_checkpoint_raises_naming_the_file_without_fallback(run, damage):
    root = run / "checkpoints"
    damage(root / STEP6 / "model.safetensors")
    trainer = trainer_for(run)
    with pytest.raises(ConfigError, match=rf"^checkpoint {root / STEP6} cannot be loaded: model\.safetensors "):
        trainer.train(resume_from_checkpoint=str(root / STEP6))
    assert names(root) == [STEP3, STEP6]


def test_a_broken_newer_checkpoint_cannot_make_pruning_delete_the_one_resumed_from(run):
    root = run / "checkpoints"
    truncate(root / STEP6 / "model.safetensors")
    # Checkpoint every step, keep one: had step 6 stayed listed it would count as the newest
    # and every fresh checkpoint (4, then 5) would be pruned on the spot.
    short = FlowTrainer(make_config(run, num_steps=5, checkpoint_steps=1, keep_checkpoints=1), tiny_model(), target_reward, PROMPTS)
    with pytest.warns(UserWarning, match="cannot be loaded"):
        short.train(resume_from_checkpoint=True, allow_config_changes=["num_steps"])  # 6 -> 5
    assert names(root) == [f"broken-{STEP6}", "step-00000005"]

    again = trainer_for(run, num_steps=6)
    rows = again.train(resume_from_checkpoint=True)  # no warning: the broken one is out of the way
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert names(root) == [f"broken-{STEP6}", "step-00000005", STEP6]


def test_set_aside_never_overwrites_an_earlier_broken_copy(tmp_path):
    for attempt in range(3):
        (tmp_path / STEP6).mkdir()
        (tmp_path / STEP6 / "attempt").write_text(str(attempt))
        with pytest.warns(UserWarning, match=f"moved the broken one to broken-{STEP6}"):
            checkpointing.set_aside(tmp_path / STEP6, "model.safetensors is 0 bytes", resumed_from=tmp_path / STEP3)
    assert names(tmp_path) == [f"broken-{STEP6}", f"broken-{STEP6}.2", f"broken-{STEP6}.3"]
    assert [(tmp_path / name / "attempt").read_text() for name in names(tmp_path)] == ["0", "1", "2"]


# ----------------------------------------------------------------- interrupted overwrites
def crash_on_the_second_rename(monkeypatch) -> None:
    """os.replace raises when it would move a temporary directory onto its final name."""
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-") and (Path(dst).parent / f".old-{Path(dst).name}").exists():
            raise OSError("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpointing.os, "replace", replace)


@pytest.mark.parametrize("explicit", [False, True], ids=["newest", "explicit_path"])
def test_crash_between_the_renames_of_an_overwrite_keeps_the_new_checkpoint(run, tmp_path, pristine, monkeypatch, explicit):
    root = run / "checkpoints"
    trainer_for(tmp_path / "older", num_steps=6, seed=1).train()  # another step 6, to be overwritten
    shutil.rmtree(root / STEP6)
    shutil.copytree(tmp_path / "older" / "checkpoints" / STEP6, root / STEP6)
    old_model = (root / STEP6 / "model.safetensors").read_bytes()

    with monkeypatch.context() as patch:
        crash_on_the_second_rename(patch)
        with pytest.raises(OSError, match="killed between the renames"):
            trainer_for(run, num_steps=6).train(resume_from_checkpoint=str(root / STEP3))  # overwrites step 6
    assert names(root) == [f".old-{STEP6}", f".tmp-{STEP6}", STEP3]
    assert checkpointing.list_checkpoints(root) == [root / STEP3]
    assert (root / f".old-{STEP6}" / "model.safetensors").read_bytes() == old_model

    resumed = trainer_for(run, num_steps=6)
    with pytest.warns(UserWarning, match=rf"{root / STEP6}: an overwrite was interrupted after the new version was complete"):
        rows = resumed.train(resume_from_checkpoint=str(root / STEP6) if explicit else True)
    # The complete new step 6 was promoted: the run ends exactly as the uninterrupted one.
    assert (root / STEP6 / "model.safetensors").read_bytes() == (pristine["run"] / "checkpoints" / STEP6 / "model.safetensors").read_bytes()
    assert_same_params(params_of(resumed.policy), pristine["params"])
    assert rows == pristine["rows"]
    assert names(root) == [STEP3, STEP6]


def test_crash_inside_the_write_of_an_overwrite_restores_the_previous_checkpoint(run, direct_from_step_3, monkeypatch):
    root = run / "checkpoints"
    # What a crash leaves when the first rename is done and the new directory was never whole.
    os.replace(root / STEP6, root / f".old-{STEP6}")
    (root / f".tmp-{STEP6}").mkdir()
    (root / f".tmp-{STEP6}" / "model.safetensors").write_bytes(b"half a model")
    assert checkpointing.latest_checkpoint(root) == root / STEP3

    trainer = FlowTrainer(make_config(run, num_steps=9, checkpoint_steps=1, keep_checkpoints=2), tiny_model(), target_reward, PROMPTS)
    loaded: list[str] = []
    real_load_state = trainer.accelerator.load_state

    def recording_load_state(input_dir, **kwargs):
        loaded.append(Path(input_dir).name)
        return real_load_state(input_dir, **kwargs)

    monkeypatch.setattr(trainer.accelerator, "load_state", recording_load_state)
    with pytest.warns(UserWarning, match=rf"{root / STEP6}: an overwrite was interrupted before .*restored the previous version from \.old-{STEP6}"):
        rows = trainer.train(resume_from_checkpoint=True)

    assert loaded == [STEP6]  # listed and resumed from
    assert_same_params(params_of(trainer.policy), direct_from_step_3["params"])
    assert rows == direct_from_step_3["rows"]
    assert names(root) == ["step-00000008", "step-00000009"]  # and pruned like any other; no leftovers


def test_a_leftover_old_copy_beside_its_checkpoint_is_deleted_by_pruning(run):
    root = run / "checkpoints"
    shutil.copytree(root / STEP6, root / f".old-{STEP6}")  # crash after the second rename
    kept = tree_digest(root / STEP6)
    checkpointing.prune_checkpoints(root, keep=2)
    assert names(root) == [STEP3, STEP6]
    assert tree_digest(root / STEP6) == kept


@pytest.mark.parametrize("manifest", [True, False], ids=["with_manifest", "without_manifest"])
def test_write_dir_atomically_repairs_a_crash_between_its_renames(tmp_path, monkeypatch, manifest):
    final = tmp_path / "export"

    def writer(text: str):
        def write(tmp: Path) -> None:
            tmp.mkdir()
            (tmp / "weights.txt").write_text(text)
        return write

    checkpointing.write_dir_atomically(final, writer("v1"), manifest=manifest)
    with monkeypatch.context() as patch:
        crash_on_the_second_rename(patch)
        with pytest.raises(OSError):
            checkpointing.write_dir_atomically(final, writer("v2"), manifest=manifest)
    assert names(tmp_path) == [".old-export", ".tmp-export"]

    with pytest.warns(UserWarning, match="an overwrite was interrupted"):
        checkpointing.recover_overwrite(final)
    # Only a manifest proves the temporary directory whole; without one the old version returns.
    assert (final / "weights.txt").read_text() == ("v2" if manifest else "v1")
    assert names(tmp_path) == (["export"] if manifest else [".tmp-export", "export"])

    checkpointing.write_dir_atomically(final, writer("v3"), manifest=manifest)
    assert names(tmp_path) == ["export"] and (final / "weights.txt").read_text() == "v3"


def test_manifest_lists_every_file_and_names_the_one_that_differs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"12345")
    (tmp_path / "sub" / "b.pt").write_bytes(b"123")
    checkpointing.write_manifest(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"files": {"a.bin": 5, "sub/b.pt": 3}}
    assert checkpointing.is_complete(tmp_path)

    (tmp_path / "sub" / "b.pt").write_bytes(b"1")
    assert checkpointing.manifest_problem(tmp_path) == "sub/b.pt is 1 bytes, manifest.json says 3 (truncated or overwritten?)"
    (tmp_path / "a.bin").unlink()
    assert checkpointing.manifest_problem(tmp_path) == "a.bin is missing (manifest.json lists it)"
    (tmp_path / "manifest.json").write_text("{not json")
    assert checkpointing.manifest_problem(tmp_path).startswith("manifest.json cannot be read (JSONDecodeError")
    (tmp_path / "manifest.json").unlink()
    assert checkpointing.manifest_problem(tmp_path) is None and not checkpointing.is_complete(tmp_path)


# ----------------------------------------------------------------- metrics.jsonl after a crash
def test_a_crash_in_the_middle_of_an_append_leaves_a_last_line_that_resume_drops(run, pristine):
    # The run crashed while appending step 5's row: its checkpoint of step 6 was never written.
    shutil.rmtree(run / "checkpoints" / STEP6)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines[:4]) + lines[4][: len(lines[4]) // 2])
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped its last line 5, which does not parse"):
        rows = trainer_for(run, num_steps=6).train(resume_from_checkpoint=True)
    assert rows == pristine["rows"]


def test_metrics_log_drops_only_a_partial_last_line_and_names_a_broken_one_elsewhere(tmp_path):
    log = checkpointing.MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.append({"step": step, "loss": 0.5})
    with open(log.path, "a") as handle:
        handle.write('{"step": 4, "lo')  # no newline: the append was cut short
    with pytest.warns(UserWarning, match="dropped its last line 4"):
        assert [row["step"] for row in log.read()] == [1, 2, 3]
    with pytest.warns(UserWarning, match="dropped its last line 4"):
        log.truncate_after(2)
    assert log.path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.5}\n'
    log.path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    for call in (log.read, lambda: log.truncate_after(5)):
        with pytest.raises(ConfigError, match=r"metrics\.jsonl: line 2 is not a metrics row"):
            call()
