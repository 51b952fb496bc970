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
