"""DeepSpeed ZeRO-2 through the shipped accelerate config, on the CPU (gloo, 2 processes): the
run really goes through DeepSpeed, resumes to the same metrics as an uninterrupted run, and
micro-batches (which must not step the engine per chunk) train like whole batches."""

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from adrpo.tasks.digits import PretrainSettings, load_or_pretrain
from conftest import LAUNCH_SETTINGS, launch_fm_train, write_launch_config

pytest.importorskip("deepspeed")


def cpu_zero2_config(path: Path) -> Path:
    """The shipped ZeRO-2 accelerate config, on 2 CPU processes without mixed precision."""
    shipped = resources.files("adrpo") / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    values = yaml.safe_load(shipped.read_text())
    assert values["distributed_type"] == "DEEPSPEED" and values["deepspeed_config"]["zero_stage"] == 2
    values.update(use_cpu=True, num_processes=2, mixed_precision="no")
    path.write_text(yaml.safe_dump(values))
    return path


def launch(accelerate_config: Path, config: Path, *extra: str) -> None:
    launch_fm_train(["--config_file", str(accelerate_config)], config, *extra, env={"DS_ACCELERATOR": "cpu"}, timeout=400)


def write_config(path: Path, cache: Path, output_dir: Path, num_steps: int, **trainer) -> Path:
    # eval_steps 2: the 2-step first half and the whole run evaluate at the same steps
    return write_launch_config(path, cache, output_dir, num_steps, eval_steps=2, **trainer)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(900)
def test_zero2_trains_resumes_and_accumulates_micro_batches(tmp_path):
    cache = tmp_path / "cache"
    load_or_pretrain(PretrainSettings(**LAUNCH_SETTINGS), cache=cache)
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
