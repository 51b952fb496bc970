"""Ctrl-C on `adrpo sweep` with 2 workers, then the same command again: the interrupt stops the sweep at
once with a message (exit 130, no traceback), finished runs are loaded and never trained again, the
run that was stopped resumes from its checkpoint, and the report equals that of a sweep never
interrupted; the workers' collapse alarms reach the parent's stderr through its progress bar, prefixed by
their runs. One subprocess sweep (~15 s here) and two in-process ones on the tiny digits models."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from adrpo import cli
from conftest import TINY_SETTINGS

REPO = Path(__file__).resolve().parents[1]
# steps per run: long enough that the interrupt lands while runs are still training (at 100 a worker's later runs
# take ~0.3 s each on this machine)
STEPS = 300


def sweep_yaml(tmp_path: Path, cache: Path, name: str) -> Path:
    spec = {
        "task": "digits",
        "task_args": {"settings": dict(TINY_SETTINGS), "cache": str(cache), "eval_samples": 2, "eval_sampling_steps": 2},
        "trainer": {"num_steps": STEPS, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 2, "learning_rate": 1e-3,
                    "checkpoint_steps": 20, "logging_steps": 10, "report_to": ["none"], "progress_bar": False,
                    "monitor_thresholds": {"w2_max": 1e-12}},  # every run alarms at its first logged row
        "eval": {"steps": 50}, "seeds": [0], "workers": 2, "output_dir": str(tmp_path / name),
        "methods": [{"label": "ADRPO", "method": "adrpo", "grid": {"beta0": [0.5, 1.0]}},
                    {"label": "ORW", "method": "orw_cfm_w2", "grid": {"orw_alpha": [0.3, 1.0, 3.0]}}],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_dirs(out: Path) -> list[Path]:
    return sorted(path for path in (out / "runs").glob("*/seed-0"))


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_stops_a_sweep_at_once_and_the_same_command_resumes_it_exactly(tmp_path, digits_cache, capsys):
    config = sweep_yaml(tmp_path, digits_cache, "interrupted")
    out = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    # Ctrl-C's default action in the sweep even where this test runs in a background job, which a
    # non-interactive shell starts with SIGINT ignored (and Python keeps an ignored SIGINT ignored)
    sweep = subprocess.Popen([sys.executable, "-m", "adrpo.cli", "sweep", "--config", str(config)], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait for a finished run and a run half-way (a checkpoint, no result yet)
        dirs = run_dirs(out) if (out / "runs").is_dir() else []
        finished = [d for d in dirs if (d / "result.json").exists()]
        halfway = [d for d in dirs if not (d / "result.json").exists() and any((d / "checkpoints").glob("step-*"))]
        if finished and halfway:
            break
        time.sleep(0.02)
    else:
        sweep.kill()
        raise AssertionError("the sweep never had a finished and a half-way run at once")
    sweep.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    _, err = sweep.communicate(timeout=60)
    assert time.monotonic() - interrupted_at < 10  # at once, not after the queued runs trained
    assert sweep.returncode == 130, err
    assert "interrupted:" in err and "Run the same command again to resume" in err and "Traceback" not in err
    # the workers' alarms came through the parent's bar, each on its own line and prefixed by its run
    alarms = [line for line in err.splitlines() if "collapse monitor: w2_bound" in line]
    assert alarms and all(re.match(r"\s*(ADRPO|ORW) \(\w+=[\d.]+\) seed 0: collapse monitor", line) for line in alarms), alarms
    before = {d: (d / "result.json").stat().st_mtime_ns for d in run_dirs(out) if (d / "result.json").exists()}
    assert 1 <= len(before) < 5

    cli.main(["sweep", "--config", str(config), "--workers", "1"])  # the same command again
    resumed_err = capsys.readouterr().err
    assert f"runs: {len(before)} of 5 finished before and loaded" in resumed_err
    assert {d: (d / "result.json").stat().st_mtime_ns for d in before} == before  # never trained again
    for run in run_dirs(out):  # a resumed run continued from its checkpoint: no step logged twice
        steps = steps_logged(run)
        assert steps == sorted(set(steps)) and steps[-1] == STEPS, (run, steps)

    cli.main(["sweep", "--config", str(sweep_yaml(tmp_path, digits_cache, "straight")), "--workers", "1"])
    assert (out / "table.md").read_text() == (tmp_path / "straight" / "table.md").read_text()
    interrupted, straight = (json.loads((tmp_path / name / "results.json").read_text())["runs"] for name in ("interrupted", "straight"))
    assert [(r["label"], r["trajectory"], r["alarms"]) for r in interrupted] == [(r["label"], r["trajectory"], r["alarms"]) for r in straight]
