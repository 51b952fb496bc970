"""The benchmark scripts' own measuring code, on a tiny trainer (timings themselves are not
asserted: they live in the scripts' printed ratios)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator

from adrpo.flow.trainer import FlowTrainer
from conftest import PROMPTS, make_config, target_reward, tiny_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def trainer_efficiency(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their _common
    spec = importlib.util.spec_from_file_location("trainer_efficiency", BENCHMARKS / "trainer_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("_common", None)


def test_timed_inside_records_one_value_per_part_and_step_and_restores_the_calls(tmp_path, trainer_efficiency):
    trainer = FlowTrainer(make_config(tmp_path, num_steps=3), tiny_model(), target_reward, PROMPTS, accelerator=Accelerator(cpu=True))
    untouched = FlowTrainer(make_config(tmp_path / "b", num_steps=3), tiny_model(), target_reward, PROMPTS, accelerator=Accelerator(cpu=True))
    inside: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    with trainer_efficiency.timed_inside(trainer, inside):
        rows = [trainer.step() for _ in range(3)]
    assert [len(values) for values in inside.values()] == [3, 3, 3]
    assert all(value > 0 for values in inside.values() for value in values)
    assert rows == [untouched.step() for _ in range(3)]  # timing changes nothing the step computes
    for owner, name in [(trainer, "_sample"), (trainer, "reference_velocity"), (trainer, "_loss_and_backward"),
                        (trainer.calls.optimizer, "step"), (trainer.calls.optimizer, "zero_grad")]:
        assert name not in vars(owner)  # the class's method again
    trainer.step()
    assert [len(values) for values in inside.values()] == [3, 3, 3]


@pytest.mark.timeout(300)
def test_sharding_benchmark_counts_half_the_bytes_per_process_under_fsdp2(tmp_path):
    """benchmarks/sharding.py --quick (five launches of the tiny digits MLP): every launch steps, each FSDP2
    process holds half of DDP's policy and reference bytes (the byte counts are exact; the speeds are only printed),
    the per-block launches shard each residual block on its own, and every 2-process rank timed its collectives."""
    import json
    import subprocess

    out = tmp_path / "sharding.json"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "sharding.py"), "--quick", "--out", str(out)], capture_output=True,
                            text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ratio_policy_bytes"] == pytest.approx(0.5, abs=0.01)  # rows padded to equal shards: just above 0.5
    assert report["ratio_reference_bytes"] == pytest.approx(0.5, abs=0.01)
    ddp, fsdp = report["bytes"]["DDP, 2"], report["bytes"]["FSDP2 per block, 2"]
    assert ddp["parameters"] == ddp["whole_parameters"] and ddp["optimizer_state"] >= 2 * ddp["parameters"]  # moments whole
    assert fsdp["gradients"] == fsdp["parameters"] < ddp["parameters"]
    steps = report["settings"]["warmup"] + report["settings"]["steps"]
    for name, rounds in report["runs"].items():
        for reports in rounds:
            assert len(reports) == (1 if name == "1 process" else 2)
            assert all(r["optimizer_steps"] == steps and r["timed_seconds"] > 0 for r in reports)
            assert all(r["collectives"].keys() == ({"all_gather", "reduce_scatter", "all_reduce"} if len(reports) == 2 else set())
                       for r in reports)
    units = {name: rounds[0][0]["units"] for name, rounds in report["runs"].items()}
    # the root and its output-layer unit, and per block 3 ResidualBlocks more
    assert units == {"1 process": 0, "DDP, 2": 0, "FSDP2, 2": 2, "FSDP2 per block, 2": 5, "FSDP2 per block, gather per forward, 2": 5}
    assert "ratio FSDP2 / DDP policy bytes per process" in result.stdout
    assert "ratio FSDP2 per block, 2 / 1 process samples per second" in result.stdout
