"""Two-process DDP on the CPU through `accelerate launch`: training runs, every rank saves its
RNG state, a resumed two-process run ends with the same weights as an uninterrupted one, and
micro-batches train the same weights as whole batches."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adrpo.tasks.digits import PretrainSettings, load_or_pretrain
from conftest import LAUNCH_SETTINGS, launch_fm_train, write_launch_config

DDP = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(config: Path, *extra: str) -> None:
    launch_fm_train(DDP, config, *extra)


@pytest.mark.timeout(600)
def test_two_process_resume_matches_uninterrupted(tmp_path):
    cache = tmp_path / "cache"
    load_or_pretrain(PretrainSettings(**LAUNCH_SETTINGS), cache=cache)  # build once, not in both ranks
    whole = write_launch_config(tmp_path / "whole.yaml", cache, tmp_path / "whole", 4)
    launch(whole)
    first = write_launch_config(tmp_path / "first.yaml", cache, tmp_path / "split", 2)
    launch(first)
    launch(write_launch_config(tmp_path / "second.yaml", cache, tmp_path / "split", 4), "--resume")

    final = "checkpoints/step-00000004"
    assert sorted(p.name for p in (tmp_path / "whole" / final).iterdir()) == [
        "custom_checkpoint_0.pkl", "manifest.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"]
    a = load_file(tmp_path / "whole" / final / "model.safetensors")
    b = load_file(tmp_path / "split" / final / "model.safetensors")
    base = load_file(tmp_path / "whole" / "checkpoints/step-00000002" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != base[k]).any() for k in a)  # training moved the weights

    # micro-batches of 3 (N = 8 per rank): gradients accumulate without a sync, then all-reduce once
    launch(write_launch_config(tmp_path / "micro.yaml", cache, tmp_path / "micro", 4, micro_batch_size=3))
    c = load_file(tmp_path / "micro" / final / "model.safetensors")
    for key in a:
        torch.testing.assert_close(c[key], a[key], rtol=1e-4, atol=1e-6)
