"""adrpo.distributed_exit.end_distributed: the FSDP2 objects that hold a gloo group are freed before Python's exit."""

import gc
import weakref

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from adrpo.distributed_exit import end_distributed


def sharded_model_dropped() -> weakref.ref:
    """A weak reference to an FSDP2 model that was trained a step and then let go of."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model(torch.ones(2, 4)).sum().backward()
    return weakref.ref(model)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()


def test_the_sharded_model_outlives_its_function_until_end_distributed_collects_it(one_process_group):
    gc.disable()  # a collection the allocator happens to trigger must not stand in for end_distributed's
    try:
        model = sharded_model_dropped()
        assert model() is not None  # held by its own cycles: left alone, Python's finalization would free it
        end_distributed()
    finally:
        gc.enable()
    assert model() is None
    assert not dist.is_initialized()


def test_without_a_process_group_it_only_collects():
    assert not dist.is_initialized()
    end_distributed()
    assert not dist.is_initialized()


def test_the_cli_ends_every_command_with_it(monkeypatch, capsys):
    import adrpo.cli

    calls = []
    monkeypatch.setattr(adrpo.cli, "end_distributed", lambda: calls.append(dist.is_initialized()))
    adrpo.cli.main(["presets"])
    assert calls == [False] and "digits-quick" in capsys.readouterr().out
