"""adrpo.fsdp_gathering.no_grad_forwards under FSDP2 for tests/test_sharding.py, on 2 processes over gloo.

    python -m torch.distributed.run --nproc_per_node 2 tests/launch_fsdp_forwards.py OUT_DIR

A residual MLP wrapped the way accelerate's FSDP2 preparation wraps a transformer: each block a sharding
unit that reshards after its forward, the output layer a unit that does not, the root left to torch's
default. Each process writes OUT_DIR/rank-<i>.json: for a sampler of ``EULER_STEPS`` Euler steps inside
``no_grad_forwards`` with ``keep_gathered`` off and on, the all-gathers it made and whether it ended
with every parameter sharded; whether both samplers' outputs are bit for bit equal; and the all-gathers
of one training forward and backward before the samplers, after them, and on a model whose very first
forward was inside ``keep_gathered`` (so whether each unit's own setting was restored).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
from torch.distributed.tensor import DTensor

from adrpo.distributed_exit import end_distributed
from adrpo.fsdp_gathering import no_grad_forwards

BLOCKS, WIDTH, EULER_STEPS = 3, 16, 5


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.proj(x))


class Velocity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_in = nn.Linear(WIDTH, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        self.proj_out = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for block in self.blocks:
            x = block(x)
        return self.proj_out(x)


def sharded_velocity() -> Velocity:
    torch.manual_seed(0)
    model = Velocity()
    for block in model.blocks:
        fully_shard(block, reshard_after_forward=True)
    fully_shard(model.proj_out, reshard_after_forward=False)
    fully_shard(model)
    return model


def gathers(fn: Callable[[], object]) -> int:
    """The all-gathers FSDP2 makes while ``fn`` runs: its parameter groups' unshards from sharded weights."""
    count = 0
    original = FSDPParamGroup.unshard

    def counted(group: FSDPParamGroup, *args, **kwargs):
        nonlocal count
        count += not group.is_unsharded and group._all_gather_result is None
        return original(group, *args, **kwargs)

    FSDPParamGroup.unshard = counted
    try:
        fn()
    finally:
        FSDPParamGroup.unshard = original
    return count


def sample(model: Velocity, x: torch.Tensor, *, keep_gathered: bool) -> torch.Tensor:
    with torch.no_grad(), no_grad_forwards(model, keep_gathered=keep_gathered):
        for _ in range(EULER_STEPS):
            x = x + model(x) / EULER_STEPS
    return x


def train_step(model: Velocity, x: torch.Tensor) -> None:
    model(x).square().mean().backward()
    model.zero_grad(set_to_none=True)


def all_sharded(model: nn.Module) -> bool:
    return all(isinstance(p, DTensor) for p in model.parameters())


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.manual_seed(1 + dist.get_rank())
    x = torch.randn(4, WIDTH)
    model = sharded_velocity()
    report: dict[str, object] = {"units": BLOCKS + 2, "euler_steps": EULER_STEPS}
    report["train_step_gathers_before"] = gathers(lambda: train_step(model, x))
    samples = {}
    for keep in (False, True):
        report[f"gathers_keep_{keep}"] = gathers(lambda keep=keep: samples.setdefault(keep, sample(model, x, keep_gathered=keep)))
        report[f"sharded_after_keep_{keep}"] = all_sharded(model)
    report["samples_equal"] = torch.equal(samples[False], samples[True])
    report["train_step_gathers_after"] = gathers(lambda: train_step(model, x))
    fresh = sharded_velocity()  # its root decides its own setting at its first forward, here inside keep_gathered
    report["first_forward_inside_equal"] = torch.equal(sample(fresh, x, keep_gathered=True), samples[False])
    report["train_step_gathers_first_forward_inside"] = gathers(lambda: train_step(fresh, x))
    (out / f"rank-{dist.get_rank()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
    end_distributed()  # its models' cycles freed before Python's exit, which otherwise aborts about one launch in five
