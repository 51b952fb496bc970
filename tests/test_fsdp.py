"""The flow trainer under FSDP2 on 2 CPU processes (gloo) through `accelerate launch --use_fsdp
--fsdp_version 2`: parameters sharded in place, the frozen reference and base copies sharded the
same way, the sampling snapshot and the moving reference swapped shard-locally, sharded
(torch.distributed.checkpoint) checkpoints, exact resume.

accelerate selects FSDP only for GPU launches; on a CPU :func:`adrpo.flow.sharding.shard_on_cpu`
switches the MULTI_CPU state to it, and from there the code is accelerate's and torch's FSDP2.

The yardstick is 2-process DDP with the same settings. Each process draws its own noise and
prompts (seeded by its rank), so a one-process run at the same global batch draws other samples
and is not comparable number for number; 2-process DDP computes the same per-rank samples and
the same mean gradient. FSDP2 reduce-scatters the gradient where DDP all-reduces it: with two
ranks both add the same two numbers, so the weights agree bit for bit (asserted). The logged
gradient norm is a sum of per-shard squares in another order: logged metrics agree to 1e-6
relative (measured: 8e-8).
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


def assert_rows_close(a: Path, b: Path) -> None:
    rows_a, rows_b = ([json.loads(line) for line in p.read_text().splitlines()] for p in (a, b))
    assert len(rows_a) == len(rows_b) == 5  # 4 steps + the step-0 evaluation
    for x, y in zip(rows_a, rows_b):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float):
                assert value == pytest.approx(y[key], rel=1e-6, abs=1e-12), key


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("digits-cache")
    load_or_pretrain(PretrainSettings(**LAUNCH_SETTINGS), cache=cache)  # build once, not in both ranks
    return cache


@pytest.mark.timeout(600)
def test_fsdp2_full_finetuning_killed_and_resumed_equals_ddp(tmp_path, cache):
    """2 steps, a new launch resuming to 4: bit for bit DDP's uninterrupted 4 steps (so also FSDP2's own)."""
    launch_fm_train(DDP, write_launch_config(tmp_path / "ddp.yaml", cache, tmp_path / "ddp", 4, eval_steps=2, **MOVING))
    launch_fm_train(FSDP2, write_launch_config(tmp_path / "first.yaml", cache, tmp_path / "fsdp", 2, eval_steps=2, **MOVING))
    launch_fm_train(FSDP2, write_launch_config(tmp_path / "second.yaml", cache, tmp_path / "fsdp", 4, eval_steps=2, **MOVING),
                    "--resume")

    ddp = load_file(tmp_path / "ddp" / FINAL / "model.safetensors")
    fsdp = sharded_weights(tmp_path / "fsdp" / FINAL)
    assert fsdp.keys() == ddp.keys()
    assert all(torch.equal(fsdp[k], ddp[k]) for k in ddp)
    earlier = sharded_weights(tmp_path / "fsdp" / "checkpoints/step-00000002")
    assert any(not torch.equal(fsdp[k], earlier[k]) for k in fsdp)  # the resumed launch trained
    assert_rows_close(tmp_path / "fsdp" / "metrics.jsonl", tmp_path / "ddp" / "metrics.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["w2"] != row["w2_base"] for row in rows[2:])  # the moving reference is not the base (nor stale)


def sd3_config(path: Path, tiny_sd3: tuple[Path, Path], output_dir: Path) -> Path:
    """The sd3-tiny preset on the tiny pipeline, with the moving reference and the snapshot."""
    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / "adrpo/configs/sd3-tiny.yaml").read_text())
    spec["task_args"].update(pipeline=str(tiny_sd3[0]), reward={"type": "clip_score", "model": str(tiny_sd3[1])})
    spec["trainer"].update(output_dir=str(output_dir), report_to=["none"], progress_bar=False,
                           **{k: v for k, v in MOVING.items() if k != "micro_batch_size"})
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.timeout(600)
def test_fsdp2_sd3_lora_per_transformer_block_equals_ddp_and_exports_whole_adapters(tmp_path, tiny_sd3):
    """The shipped fsdp2.yaml (each JointTransformerBlock a sharding unit, sharded checkpoints) on 2 CPU
    processes: the diffusers LoRA export, gathered from the shards, is bit for bit DDP's."""
    import yaml

    launch = yaml.safe_load((Path(__file__).parents[1] / "adrpo/configs/accelerate/fsdp2.yaml").read_text())
    launch.update(num_processes=2, mixed_precision="no")
    (tmp_path / "fsdp2.yaml").write_text(yaml.safe_dump(launch))
    launch_fm_train(DDP, sd3_config(tmp_path / "ddp.yaml", tiny_sd3, tmp_path / "ddp"))
    launch_fm_train(["--config_file", str(tmp_path / "fsdp2.yaml")], sd3_config(tmp_path / "fsdp.yaml", tiny_sd3, tmp_path / "fsdp"))

    ddp = load_file(tmp_path / "ddp" / "lora" / "pytorch_lora_weights.safetensors")
    fsdp = load_file(tmp_path / "fsdp" / "lora" / "pytorch_lora_weights.safetensors")
    assert fsdp.keys() == ddp.keys() and all(torch.equal(fsdp[k], ddp[k]) for k in ddp)
    assert any(ddp[k].abs().max() > 0 for k in ddp if "lora_B" in k)  # the adapters trained
    sharded_weights(tmp_path / "fsdp" / FINAL)  # the checkpoint is one shard per rank
    assert_rows_close(tmp_path / "fsdp" / "metrics.jsonl", tmp_path / "ddp" / "metrics.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/w2"] > 0  # evaluation's policy forward leaves no stale whole weights behind
