"""benchmarks/gpu_check.py on the CPU: its --tiny run of the same code path reports every section
consistently, and without CUDA (and --tiny) it says so in one line and exits 0."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HELPERS = ("_common", "_trl", "_gpu_shapes", "trainer_efficiency")


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its helpers from there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path on any machine
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for name in HELPERS:
        sys.modules.pop(name, None)


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def check_flow_steps(section: dict, methods: tuple[str, ...]) -> None:
    """Every method timed for the same number of steps, positive times, the parts within their step."""
    run = section["run"]
    assert tuple(section["methods"]) == methods
    for timed in section["methods"].values():
        assert timed["steps_timed"] == run["rounds"] * run["steps_per_block"]
        assert all(positive(timed[f"{part}_s"]) for part in ("step", "sampling", "policy", "reference"))
        assert timed["sampling_s"] + timed["policy_s"] + timed["reference_s"] <= timed["step_s"]  # parts of that very step


def test_tiny_run_reports_every_section_consistently(gpu_check, tmp_path, capsys):
    out = tmp_path / "not-yet" / "gpu-check.json"
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["device"] == "cpu" and report["peak_memory_note"].startswith("not measured")
    sd3, flux, llm = (report["sections"][name] for name in ("sd3_fm", "flux_lora", "llm"))
    assert set(report["sections"]) == {"sd3_fm", "flux_lora", "llm"}

    check_flow_steps(sd3, ("adrpo", "orw_cfm_w2"))
    assert sd3["ratio_adrpo_orw"] == sd3["methods"]["adrpo"]["step_s"] / sd3["methods"]["orw_cfm_w2"]["step_s"]

    check_flow_steps(flux, ("adrpo",))
    assert flux["gradient_checkpointing"] is True and flux["only_lora_trainable"] is True
    assert 0 < flux["trainable_parameters"] < flux["parameters"] and flux["error"] is None
    assert flux["fits"] is None and flux["device_memory_gib"] is None  # not knowable without CUDA

    run = llm["run"]
    steps = run["rounds"] * (run["steps_per_block"] - run["warmup"])  # each block's first steps are dropped
    assert llm["steps_timed"] == {"adrpo": steps, "grpo": steps}
    assert all(positive(value) for value in llm["step_s"].values())
    assert llm["ratio_adrpo_grpo"] == llm["step_s"]["adrpo"] / llm["step_s"]["grpo"]
    assert llm["reference"] == {"adrpo": "adapter disabled", "grpo": "adapter disabled"}
    assert llm["gradient_checkpointing"] == {"adrpo": True, "grpo": True}
    assert llm["trainable_parameters"]["adrpo"] == llm["trainable_parameters"]["grpo"] > 0

    for section in (sd3, flux, llm):
        assert positive(section["held_gib"])
    assert sd3["peak_memory_gib"] is flux["peak_memory_gib"] is None and set(llm["peak_memory_gib"].values()) == {None}

    printed = capsys.readouterr().out.splitlines()  # (on a CPU DeepSpeed's import may log a line first)
    machine = next(i for i, line in enumerate(printed) if line.startswith("machine: "))
    table = printed[machine + 2:]
    assert printed[machine + 1].startswith("torch ") and table[0] == "| section | quantity | value |"
    assert all(line.startswith("| ") or line == "|---|---|---|" for line in table) and table.count(table[0]) == 1
    assert "| ratio adrpo / orw_cfm_w2 step time |" in "\n".join(table) and "| ratio adrpo / grpo step time |" in "\n".join(table)


def test_without_cuda_and_without_tiny_it_says_so_and_exits_0(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gpu_check: no CUDA device here, nothing measured (--tiny runs the same code at tiny shapes on the CPU)"
    ]
    assert not out.exists()
