"""DeepSpeed ZeRO-2 through the shipped accelerate config, on the CPU (gloo, 2 processes): the
run really goes through DeepSpeed, resumes to the same metrics as an uninterrupted run, and
micro-batches (which must not step the engine per chunk) train like whole batches."""

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from adrpo.tasks.digits import PretrainSettings, load_or_pretrain

pytest.importorskip("deepspeed")

TINY = {"flow_steps": 100, "classifier_steps": 100, "autoencoder_steps": 100, "flow_width": 64}


def cpu_zero2_config(path: Path) -> Path:
    """The shipped ZeRO-2 accelerate config, on 2 CPU processes without mixed precision."""
    shipped = resources.files("adrpo") / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    values = yaml.safe_load(shipped.read_text())
    assert values["distributed_type"] == "DEEPSPEED" and values["deepspeed_config"]["zero_stage"] == 2
    values.update(use_cpu=True, num_processes=2, mixed_precision="no")
    path.write_text(yaml.safe_dump(values))
    return path


def launch(accelerate_config: Path, config: Path, *extra: str) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(accelerate_config), "-m", "adrpo.cli", "fm", "train", "--config", str(config), *extra]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def write_config(path: Path, cache: Path, output_dir: Path, num_steps: int, **trainer) -> Path:
    path.write_text(yaml.safe_dump({
        "task": "digits",
        "task_args": {"settings": TINY, "cache": str(cache), "eval_samples": 2},
        "eval_steps": 2,  # so that the 2-step first half and the whole run evaluate at the same steps
        "trainer": {"method": "adrpo", "num_steps": num_steps, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 4,
                    "checkpoint_steps": 2, "output_dir": str(output_dir), "report_to": ["none"], "progress_bar": False, **trainer},
    }))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(900)
def test_zero2_trains_resumes_and_accumulates_micro_batches(tmp_path):
    cache = tmp_path / "cache"
    load_or_pretrain(PretrainSettings(**TINY), cache=cache)
    zero2 = cpu_zero2_config(tmp_path / "zero2.yaml")
    launch(zero2, write_config(tmp_path / "whole.yaml", cache, tmp_path / "whole", 4))
    launch(zero2, write_config(tmp_path / "first.yaml", cache, tmp_path / "split", 2))
    launch(zero2, write_config(tmp_path / "second.yaml", cache, tmp_path / "split", 4), "--resume")
    launch(zero2, write_config(tmp_path / "micro.yaml", cache, tmp_path / "micro", 4, micro_batch_size=3))

    # DeepSpeed's own checkpoint layout: the engine, not plain DDP, ran
    assert (tmp_path / "whole" / "checkpoints" / "step-00000004" / "pytorch_model").is_dir()
    whole, split, micro = metrics(tmp_path / "whole"), metrics(tmp_path / "split"), metrics(tmp_path / "micro")
    assert [row["step"] for row in whole] == [0, 1, 2, 3, 4]
    assert split == whole
    assert whole[-1]["eval/w2"] > 0  # training moved the policy
    for a, b in zip(whole, micro):
        assert b.keys() == a.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
