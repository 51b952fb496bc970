"""ADRPOTrainer on two CPU processes (gloo DDP through `accelerate launch`) against one process with
the same global batch: it trains, both processes end with the same weights, and it logs the same
coefficient diagnostics, which are those of β0 − clip(adv_coef_scale·A) over the whole global batch.

Why the diagnostics must agree although sampling differs (the two runs draw different completions):
the launch script's reward depends only on a sample's place in the global generation batch and on
the step. TRL's sampler hands each process a contiguous share of the same global prompt stream,
gathers the rewards of all processes in process order, forms the groups and z-scores the rewards on
that gathered (N,) tensor, and gives each process its slice of the advantages back. So the advantages
are bitwise those of the one-process run; ADRPO's coefficient of each completion is too. Each
process then logs, per micro-batch, the mean over processes of its means and the min/max over
processes, kept over the logging interval: with equal-sized micro-batches these are the mean, min
and max over the 12 completions of the step, however TRL shuffles them into micro-batches. The min and
max are therefore equal exactly; the means differ only by float32 summation order (< 1e-6).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from launch_llm_ddp import train

SCRIPT = Path(__file__).with_name("launch_llm_ddp.py")
DDP = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
KEYS = ("adrpo/coef_mean", "adrpo/coef_min", "adrpo/coef_max", "adrpo/frac_clipped", "adrpo/frac_negative")
BETA0, SCALE, A_MIN, A_MAX, G = 0.04, 0.04, -0.04, 0.06, 4  # as in launch_llm_ddp.train


def launch_two(model_dir: Path, out_dir: Path, per_device_batch: int) -> None:
    with socket.socket() as probe:  # a free rendezvous port: other launch tests must not share 29500
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--main_process_port", str(port), *DDP, str(SCRIPT), str(model_dir), str(out_dir),
           str(per_device_batch)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def expected_diagnostics(step: int) -> dict[str, float]:
    """The diagnostics of the 12 completions generated at ``step`` (launch_llm_ddp.position_reward), by hand."""
    rewards = torch.tensor([float((7 * g + 5 * step) % 11) for g in range(12)]).view(-1, G)  # (groups, G)
    advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).view(-1)  # TRL's z-score
    scaled = SCALE * advantages
    coefficient = BETA0 - scaled.clamp(A_MIN, A_MAX)
    return {"adrpo/coef_mean": coefficient.mean().item(), "adrpo/coef_min": coefficient.min().item(),
            "adrpo/coef_max": coefficient.max().item(), "adrpo/frac_clipped": ((scaled < A_MIN) | (scaled > A_MAX)).float().mean().item(),
            "adrpo/frac_negative": (coefficient < 0).float().mean().item()}


@pytest.mark.timeout(300)
def test_two_processes_train_and_log_the_one_process_coefficients(tmp_path):
    tokenizer = char_tokenizer(list("0123456789+="))
    model_dir = save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2), tokenizer,
                                         tmp_path / "model")
    train(str(model_dir), str(tmp_path / "one"), 6)  # one process, in this one: 6 completions per micro-batch
    launch_two(model_dir, tmp_path / "two", 3)  # two processes: 3 each, the same global batch

    one = json.loads((tmp_path / "one" / "rank-0.json").read_text())
    two = [json.loads((tmp_path / "two" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert one["num_processes"] == 1 and two[0]["num_processes"] == 2
    for run in (one, *two):
        assert run["changed"] == run["parameters"]  # every parameter moved
    final = [torch.load(tmp_path / "two" / f"rank-{r}.pt") for r in (0, 1)]
    assert all(torch.equal(final[0][n], final[1][n]) for n in final[0])  # gradients were all-reduced

    assert [row["step"] for row in one["logs"]] == [row["step"] for row in two[0]["logs"]] == [1, 2, 3]
    for row_one, row_two in zip(one["logs"], two[0]["logs"]):
        expected = expected_diagnostics(row_one["step"] - 1)  # generated before optimizer step `step`
        for key in KEYS:
            assert row_two[key] == pytest.approx(row_one[key], abs=1e-6), key
            assert row_one[key] == pytest.approx(expected[key], abs=1e-6), key
        assert row_two["adrpo/coef_min"] == row_one["adrpo/coef_min"]  # the same float32 element: exact
        assert row_two["adrpo/coef_max"] == row_one["adrpo/coef_max"]
        assert row_two["reward"] == row_one["reward"]  # the same global rewards
    # not a vacuous comparison: every step has clipped (coefficient β0 − A_min), graded and negative coefficients
    for row in one["logs"]:
        assert row["adrpo/coef_max"] == pytest.approx(BETA0 - A_MIN) and 0 < row["adrpo/frac_clipped"] < 1
        assert row["adrpo/coef_min"] < 0 and row["adrpo/frac_negative"] > 0
