"""The flow trainer under parameter sharding on 2 CPU processes: FSDP2 (gloo, through `accelerate
launch --use_fsdp --fsdp_version 2`) and DeepSpeed ZeRO-3 (`DS_ACCELERATOR=cpu`). Parameters are
sharded in place, the frozen reference and base copies sharded the same way, the sampling snapshot
and the moving reference swapped shard-locally, checkpoints in the engine's sharded format, exact resume.

accelerate selects FSDP only for GPU launches; on a CPU :func:`adrpo.cpu_fsdp.fsdp_on_cpu`
switches the MULTI_CPU state to it, and from there the code is accelerate's and torch's FSDP2.

The yardstick is 2-process DDP with the same settings, run once per module. Each process draws its
own noise and prompts (seeded by its rank), so a one-process run at the same global batch draws
other samples and is not comparable number for number; 2-process DDP computes the same per-rank
samples and the same mean gradient.

- FSDP2 reduce-scatters the gradient where DDP all-reduces it: with two ranks both add the same two
  numbers, so the weights agree bit for bit (asserted). The logged gradient norm is a sum of
  per-shard squares in another order: logged metrics agree to 1e-6 relative (measured: 8e-8).
- ZeRO-3 runs AdamW on its flat per-rank fp32 buffers instead of one tensor per parameter, so an
  element can take CPU kernels' vectorised or scalar-remainder path differently: weights agree to
  1e-6 absolute (measured 1.2e-7, one float32 step at |w| ~ 1-4; resume is bit for bit). ``w2`` is
  the mean square of v_θ − v_ref, about 1e-3 of the velocities, so those steps show there as ~2e-6
  relative: metrics agree to 1e-4 relative (as tests/test_deepspeed.py's micro-batches).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adrpo.tasks.digits import PretrainSettings, load_or_pretrain
from conftest import LAUNCH_SETTINGS, launch_fm_train, write_launch_config

COMMON = ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
DDP = ["--multi_gpu", *COMMON]
FSDP2 = ["--use_fsdp", "--fsdp_version", "2", *COMMON]
ZERO3_ENV = {"DS_ACCELERATOR": "cpu"}
ACCELERATE_CONFIGS = Path(__file__).parents[1] / "adrpo/configs/accelerate"
# every path that swaps or copies weights: the moving reference (soft update every step), the
# sampling snapshot (refreshed every 2 steps), micro-batches (no-grad forwards, then no_sync), evaluation
MOVING = dict(sync_ref_model=True, ref_model_sync_steps=1, sampler_refresh_every=2, micro_batch_size=3)
FINAL = "checkpoints/step-00000004"


def sharded_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The whole model of an FSDP2 checkpoint (its per-rank torch.distributed.checkpoint files)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    shards = checkpoint / "pytorch_model_fsdp_0"
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard per rank
    whole = checkpoint.parent.parent.parent / f"{checkpoint.parent.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(shards, whole)
    return torch.load(whole)["model"]


def zero3_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The whole fp32 model of a ZeRO-3 checkpoint (one partition file per rank)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ranks = sorted(p.name for p in (checkpoint / "pytorch_model").glob("zero_pp_rank_*_model_states.pt"))
    assert ranks == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


def assert_rows_close(a: Path, b: Path, *, rel: float = 1e-6, steps: int = 5) -> None:
    rows_a, rows_b = ([json.loads(line) for line in p.read_text().splitlines()] for p in (a, b))
    assert len(rows_a) == len(rows_b) == steps  # 4 steps + the step-0 evaluation
    for x, y in zip(rows_a, rows_b):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float):
                assert value == pytest.approx(y[key], rel=rel, abs=1e-12), key


def fsdp2_launch(tmp_path: Path) -> list[str]:
    """The shipped fsdp2.yaml on 2 CPU processes (its cpu_ram_efficient_loading off: accelerate's
    loader fails on the diffusers transformers' buffers)."""
    import yaml

    launch = yaml.safe_load((ACCELERATE_CONFIGS / "fsdp2.yaml").read_text())
    launch.update(num_processes=2, mixed_precision="no")
    path = tmp_path / "fsdp2.yaml"
    path.write_text(yaml.safe_dump(launch))
    return ["--config_file", str(path)]


def zero3_launch(tmp_path: Path, accelerate_config: Path | None = None) -> list[str]:
    """The shipped deepspeed_zero3.yaml on 2 CPU processes, or ``accelerate_config``'s DeepSpeed file."""
    import yaml

    pytest.importorskip("deepspeed")
    launch = yaml.safe_load((ACCELERATE_CONFIGS / "deepspeed_zero3.yaml").read_text())
    assert launch["deepspeed_config"]["zero_stage"] == 3
    launch.update(num_processes=2, use_cpu=True, mixed_precision="no")
    if accelerate_config is not None:  # accelerate refuses the keys a DeepSpeed file sets itself
        launch["deepspeed_config"] = {"deepspeed_config_file": str(accelerate_config)}
        del launch["mixed_precision"]
    path = tmp_path / "zero3.yaml"
    path.write_text(yaml.safe_dump(launch))
    return ["--config_file", str(path)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("digits-cache")
    load_or_pretrain(PretrainSettings(**LAUNCH_SETTINGS), cache=cache)  # build once, not in both ranks
    return cache


@pytest.fixture(scope="module")
def ddp_digits(tmp_path_factory, cache) -> Path:
    """4 steps of full fine-tuning under 2-process DDP, with every weight-swapping path on."""
    run = tmp_path_factory.mktemp("ddp-digits")
    launch_fm_train(DDP, write_launch_config(run / "ddp.yaml", cache, run / "ddp", 4, eval_steps=2, **MOVING))
    return run / "ddp"


def killed_and_resumed(launch: list[str], tmp_path: Path, cache: Path, env: dict | None = None) -> Path:
    """2 steps, then a new launch resuming to 4; the run directory."""
    launch_fm_train(launch, write_launch_config(tmp_path / "first.yaml", cache, tmp_path / "run", 2, eval_steps=2, **MOVING), env=env)
    launch_fm_train(launch, write_launch_config(tmp_path / "second.yaml", cache, tmp_path / "run", 4, eval_steps=2, **MOVING),
                    "--resume", env=env)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["w2"] != row["w2_base"] for row in rows[2:])  # the moving reference is not the base (nor stale)
    return tmp_path / "run"


@pytest.mark.timeout(600)
def test_fsdp2_full_finetuning_killed_and_resumed_equals_ddp(tmp_path, cache, ddp_digits):
    """2 steps, a new launch resuming to 4: bit for bit DDP's uninterrupted 4 steps (so also FSDP2's own)."""
    run = killed_and_resumed(FSDP2, tmp_path, cache)
    ddp = load_file(ddp_digits / FINAL / "model.safetensors")
    fsdp = sharded_weights(run / FINAL)
    assert fsdp.keys() == ddp.keys()
    assert all(torch.equal(fsdp[k], ddp[k]) for k in ddp)
    earlier = sharded_weights(run / "checkpoints/step-00000002")
    assert any(not torch.equal(fsdp[k], earlier[k]) for k in fsdp)  # the resumed launch trained
    assert_rows_close(run / "metrics.jsonl", ddp_digits / "metrics.jsonl")


@pytest.mark.timeout(600)
def test_zero3_every_weight_partitioned_killed_and_resumed_equals_ddp(tmp_path, cache, ddp_digits):
    """ZeRO-3 with no persistent parameters (every weight partitioned, whole only inside a forward), 2
    steps and a resume to 4: DDP's weights to float32 rounding, and DeepSpeed's per-rank checkpoint.
    The moving reference mixes the frozen copy's rows with the policy's, which only works if the copy
    is partitioned like the policy (a whole copy's tensors do not have the rows' shape)."""
    ds_config = tmp_path / "ds3.json"
    ds_config.write_text(json.dumps({
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": 1,
        "gradient_clipping": "auto",
    }))
    run = killed_and_resumed(zero3_launch(tmp_path, ds_config), tmp_path, cache, env=ZERO3_ENV)
    ddp = load_file(ddp_digits / FINAL / "model.safetensors")
    zero = zero3_weights(run / FINAL)
    assert zero.keys() == ddp.keys()
    assert max((zero[k] - ddp[k]).abs().max().item() for k in ddp) < 1e-6
    earlier = zero3_weights(run / "checkpoints/step-00000002")
    assert min((zero[k] - earlier[k]).abs().max().item() for k in zero if "proj" in k) > 1e-5  # the resumed launch trained
    assert_rows_close(run / "metrics.jsonl", ddp_digits / "metrics.jsonl", rel=1e-4)


def tiny_config(path: Path, name: str, folders: tuple[Path, Path], output_dir: Path, **trainer) -> Path:
    """Preset ``name`` (sd3-tiny, flux-tiny) on its tiny pipeline, with the moving reference, the snapshot
    and gradient checkpointing (the transformer's blocks recompute their activations in the backward,
    inside FSDP2's per-block gathering and ZeRO-3's hooks)."""
    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / f"adrpo/configs/{name}.yaml").read_text())
    spec["task_args"].update(pipeline=str(folders[0]), reward={"type": "clip_score", "model": str(folders[1])})
    spec["trainer"].update(output_dir=str(output_dir), report_to=["none"], progress_bar=False, gradient_checkpointing=True,
                           **{**{k: v for k, v in MOVING.items() if k != "micro_batch_size"}, **trainer})
    path.write_text(yaml.safe_dump(spec))
    return path


def sd3_config(path: Path, tiny_sd3: tuple[Path, Path], output_dir: Path, **trainer) -> Path:
    return tiny_config(path, "sd3-tiny", tiny_sd3, output_dir, **trainer)


@pytest.fixture(scope="module")
def ddp_sd3(tmp_path_factory, tiny_sd3) -> Path:
    run = tmp_path_factory.mktemp("ddp-sd3")
    launch_fm_train(DDP, sd3_config(run / "ddp.yaml", tiny_sd3, run / "ddp"))
    return run / "ddp"


def lora_export(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "lora" / "pytorch_lora_weights.safetensors")


@pytest.mark.timeout(600)
def test_fsdp2_sd3_lora_per_transformer_block_equals_ddp_and_exports_whole_adapters(tmp_path, tiny_sd3, ddp_sd3):
    """The shipped fsdp2.yaml (each JointTransformerBlock a sharding unit, sharded checkpoints) on 2 CPU
    processes: the diffusers LoRA export, gathered from the shards, is bit for bit DDP's."""
    launch_fm_train(fsdp2_launch(tmp_path), sd3_config(tmp_path / "fsdp.yaml", tiny_sd3, tmp_path / "fsdp"))

    ddp, fsdp = lora_export(ddp_sd3), lora_export(tmp_path / "fsdp")
    assert fsdp.keys() == ddp.keys() and all(torch.equal(fsdp[k], ddp[k]) for k in ddp)
    assert any(ddp[k].abs().max() > 0 for k in ddp if "lora_B" in k)  # the adapters trained
    sharded_weights(tmp_path / "fsdp" / FINAL)  # the checkpoint is one shard per rank
    assert_rows_close(tmp_path / "fsdp" / "metrics.jsonl", ddp_sd3 / "metrics.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/w2"] > 0  # evaluation's policy forward leaves no stale whole weights behind


@pytest.mark.timeout(600)
def test_zero3_sd3_lora_with_the_shipped_recipe_equals_ddp_and_exports_whole_adapters(tmp_path, tiny_sd3, ddp_sd3):
    """The shipped deepspeed_zero3.yaml: the tiny transformer's weights are below DeepSpeed's persistence
    threshold, so they stay gathered and every swap of the snapshot and reference adapters re-gathers
    them (:func:`adrpo.flow.sharding.refresh`); the export gathers the adapters. Weights to float32
    rounding (see the module docstring)."""
    launch_fm_train(zero3_launch(tmp_path), sd3_config(tmp_path / "train.yaml", tiny_sd3, tmp_path / "zero3"), env=ZERO3_ENV)
    ddp, zero = lora_export(ddp_sd3), lora_export(tmp_path / "zero3")
    assert zero.keys() == ddp.keys()
    assert max((zero[k] - ddp[k]).abs().max().item() for k in ddp) < 1e-6
    assert any(ddp[k].abs().max() > 1e-4 for k in ddp if "lora_B" in k)  # the adapters trained
    assert (tmp_path / "zero3" / FINAL / "pytorch_model" / "zero_pp_rank_1_mp_rank_00_model_states.pt").is_file()
    steps = len((ddp_sd3 / "metrics.jsonl").read_text().splitlines())
    assert_rows_close(tmp_path / "zero3" / "metrics.jsonl", ddp_sd3 / "metrics.jsonl", rel=1e-4, steps=steps)


FULL = dict(lora_rank=0, num_steps=1, sampler_refresh_every=1)  # one step: the export, not the training, is tested


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine, name", [("fsdp2", "sd3-tiny"), ("zero3", "sd3-tiny"), ("fsdp2", "flux-tiny")])
def test_a_fully_fine_tuned_transformer_exports_whole_what_the_sharded_run_trained(tmp_path, request, engine, name):
    """Full fine-tuning's export gathers one parameter at a time and the main process writes what
    save_pretrained writes (config, safetensors): exactly the trained weights, as the engine's own sharded
    checkpoint of the same step holds them, and not the base's. FLUX's double and single blocks are
    sharding units like SD3's joint blocks."""
    folders = request.getfixturevalue("tiny_sd3" if name == "sd3-tiny" else "tiny_flux")
    launch, env = (fsdp2_launch(tmp_path), None) if engine == "fsdp2" else (zero3_launch(tmp_path), ZERO3_ENV)
    launch_fm_train(launch, tiny_config(tmp_path / "train.yaml", name, folders, tmp_path / "run", **FULL), env=env)

    folder = tmp_path / "run" / "transformer"
    config = json.loads((folder / "config.json").read_text())
    exported = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert config["_class_name"] == ("SD3Transformer2DModel" if name == "sd3-tiny" else "FluxTransformer2DModel")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000001"
    trained = sharded_weights(checkpoint) if engine == "fsdp2" else zero3_weights(checkpoint)
    trained = {k.removeprefix("transformer."): v for k, v in trained.items() if k.startswith("transformer.")}
    assert trained and set(trained) <= set(exported)
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    base = load_file(folders[0] / "transformer" / "diffusion_pytorch_model.safetensors")
    assert base.keys() == exported.keys() and any(not torch.equal(base[k], exported[k]) for k in base)  # the step trained


def test_no_grad_forwards_keep_every_fsdp2_unit_gathered_once_and_restore_its_setting(tmp_path):
    """A 5-step Euler sampler on a model wrapped as accelerate wraps a transformer (3 blocks that reshard
    after their forward, an output unit that does not, the root), 2 processes over gloo
    (tests/launch_fsdp_forwards.py). Gathering per forward costs root + output unit + 3 blocks × 5 steps
    = 17 all-gathers; ``keep_gathered`` 5, one per unit, with bit for bit the same samples; both end with
    every parameter sharded. A training forward and backward gathers 5 units + 3 blocks again in the
    backward = 8 before the samplers, after them, and when the model's first forward ever was inside
    ``keep_gathered`` (the root's own setting is decided then: 9 if it were left to reshard)."""
    import os
    import subprocess
    import sys

    script = Path(__file__).with_name("launch_fsdp_forwards.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(script.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert (report["gathers_keep_False"], report["gathers_keep_True"]) == (17, 5)
        assert report["sharded_after_keep_False"] and report["sharded_after_keep_True"]
        assert report["samples_equal"] and report["first_forward_inside_equal"]
        assert report["train_step_gathers_before"] == report["train_step_gathers_after"] == 8
        assert report["train_step_gathers_first_forward_inside"] == 8
