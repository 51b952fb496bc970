"""Two-process DDP on the CPU through `accelerate launch`: training runs, every rank saves its
RNG state, a resumed two-process run ends with the same weights as an uninterrupted one, and
micro-batches train the same weights as whole batches."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from adrpo.tasks.digits import PretrainSettings, load_or_pretrain

TINY = {"flow_steps": 100, "classifier_steps": 100, "autoencoder_steps": 100, "flow_width": 64}


def launch(config: Path, *extra: str) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "adrpo.cli", "fm", "train", "--config", str(config), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


def write_config(path: Path, cache: Path, output_dir: Path, num_steps: int, **trainer) -> Path:
    path.write_text(yaml.safe_dump({
        "task": "digits",
        "task_args": {"settings": TINY, "cache": str(cache), "eval_samples": 2},
        "trainer": {"method": "adrpo", "num_steps": num_steps, "prompts_per_step": 2, "group_size": 4,
                    "sampling_steps": 4, "checkpoint_steps": 2, "output_dir": str(output_dir),
                    "report_to": ["none"], "progress_bar": False, **trainer},
    }))
    return path


@pytest.mark.timeout(600)
def test_two_process_resume_matches_uninterrupted(tmp_path):
    cache = tmp_path / "cache"
    load_or_pretrain(PretrainSettings(**TINY), cache=cache)  # build once, not in both ranks
    whole = write_config(tmp_path / "whole.yaml", cache, tmp_path / "whole", 4)
    launch(whole)
    first = write_config(tmp_path / "first.yaml", cache, tmp_path / "split", 2)
    launch(first)
    launch(write_config(tmp_path / "second.yaml", cache, tmp_path / "split", 4), "--resume")

    final = "checkpoints/step-00000004"
    assert sorted(p.name for p in (tmp_path / "whole" / final).iterdir()) == [
        "custom_checkpoint_0.pkl", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"]
    a = load_file(tmp_path / "whole" / final / "model.safetensors")
    b = load_file(tmp_path / "split" / final / "model.safetensors")
    base = load_file(tmp_path / "whole" / "checkpoints/step-00000002" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != base[k]).any() for k in a)  # training moved the weights

    # micro-batches of 3 (N = 8 per rank): gradients accumulate without a sync, then all-reduce once
    launch(write_config(tmp_path / "micro.yaml", cache, tmp_path / "micro", 4, micro_batch_size=3))
    c = load_file(tmp_path / "micro" / final / "model.safetensors")
    for key in a:
        torch.testing.assert_close(c[key], a[key], rtol=1e-4, atol=1e-6)
