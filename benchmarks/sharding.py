"""Full fine-tuning of the flow trainer on 2 CPU processes: per-process bytes under FSDP2 against DDP,
and samples per second of 2 processes against 1 at one thread each.

Five launches of ``_sharding_worker.py`` through ``accelerate launch`` (gloo; FSDP2 on a CPU takes
accelerate's own FSDP2 path through ``adrpo.cpu_fsdp.fsdp_on_cpu``): one process; 2 processes
of DDP (``--multi_gpu``); 2 processes of FSDP2 (``--use_fsdp --fsdp_version 2``) three ways: the policy
and the frozen reference sharded whole (one unit, the plugin's default for a model without
``_no_split_modules``), and each residual block a unit of its own (``TRANSFORMER_BASED_WRAP`` of
``ResidualBlock``, as ``adrpo/configs/accelerate/fsdp2.yaml`` wraps a transformer's blocks), with the
trainer's default ``fsdp_gather_for_sampling`` (every unit gathered once per sampling pass) and without
it (each block gathered at every Euler step). Each builds an ADRPO-FM ``FlowTrainer`` on the digits task
with its velocity MLP widened to ``--width`` (randomly initialised, same class and depth) and runs
``trainer.train()`` for ``--warmup`` + ``--steps`` steps, ``OMP_NUM_THREADS=1`` and one torch thread per
process. After training each process of a 2-process launch times 20 gloo collectives of the whole
policy's size (an all-gather of its share, a reduce-scatter, an all-reduce): the floor of what
FSDP2's and DDP's communication costs here, printed with the rest.

(a) Bytes, counted inside each process at its first optimizer step (after ``step()``, before
``zero_grad``): the local storage of the policy's parameters, gradients and AdamW state (a DTensor's
local shard, padding included; a DDP tensor whole), and separately the frozen reference's
parameters; the largest over the ranks. DDP's gradient buckets (a further copy of the gradients
inside its reducer) are not counted, so DDP's figure is a lower bound of what it holds. Target:
FSDP2's policy bytes ≤ 0.55 × DDP's.

(b) Weak scaling: B·G samples per process per step in every launch; samples per second over the
``--steps`` steps after the warm-up (end of the last warm-up optimizer step to the end of the last
step, from the same hook: build, start-up and the final checkpoint do not count), all processes'
samples over the slowest rank's seconds. Launches run ``--rounds`` times in palindromic order; the
median per launch is printed. Target: FSDP2 per block (the shipped recipe's wrapping) on 2 processes
≥ 1.7 × one process; the other launches' scaling, and per block gathered once against per forward,
are reported.

    .venv/bin/python benchmarks/sharding.py            # ~2 min on 2 idle CPU cores
    .venv/bin/python benchmarks/sharding.py --quick    # the code path at tiny sizes (~30 s; tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import git_commit, machine

from adrpo.tasks.digits import PretrainSettings, load_or_pretrain

WORKER = Path(__file__).resolve().with_name("_sharding_worker.py")
COMMON = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
PER_BLOCK = ["--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap", "ResidualBlock"]
FSDP2 = ["--use_fsdp", "--fsdp_version", "2", "--num_processes", "2", *COMMON]
# name: (accelerate launch's arguments, the worker's)
LAUNCHES = {
    "1 process": (["--num_processes", "1", *COMMON], []),
    "DDP, 2": (["--multi_gpu", "--num_processes", "2", *COMMON], []),
    "FSDP2, 2": (FSDP2, []),
    "FSDP2 per block, 2": ([*FSDP2, *PER_BLOCK], []),
    "FSDP2 per block, gather per forward, 2": ([*FSDP2, *PER_BLOCK], ["--gather-per-forward"]),
}
SHARDED = [name for name in LAUNCHES if name.startswith("FSDP2")]
TARGET = "FSDP2 per block, 2"  # as adrpo/configs/accelerate/fsdp2.yaml wraps a transformer
# the launch-size digits models of the tests: pretrained in seconds, for --quick
QUICK_SETTINGS = {"flow_steps": 100, "classifier_steps": 100, "autoencoder_steps": 100, "flow_width": 64}
QUICK = dict(width=128, prompts_per_step=2, group_size=4, sampling_steps=4, warmup=1, steps=2, rounds=1)
PARTS = ("sampling", "reference", "update")  # the worker's timed_inside parts (mean ms per timed step)
BYTE_ROWS = (("parameters", "parameters"), ("gradients", "gradients"), ("optimizer_state", "AdamW state"))


def free_port() -> int:
    with socket.socket() as probe:  # back-to-back launches must not share a rendezvous port
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(name: str, args: argparse.Namespace, cache: str | None, settings: dict, out: Path) -> list[dict]:
    """One launch of the worker; its per-rank reports."""
    accelerate = Path(sys.executable).with_name("accelerate")
    launch_args, worker_args = LAUNCHES[name]
    cmd = [str(accelerate), "launch", "--main_process_port", str(free_port()), *launch_args, str(WORKER), *worker_args,
           "--out", str(out), "--settings", json.dumps(settings), "--width", str(args.width),
           "--prompts-per-step", str(args.prompts_per_step), "--group-size", str(args.group_size),
           "--sampling-steps", str(args.sampling_steps), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--seed", str(args.seed)]
    if cache is not None:
        cmd += ["--cache", cache]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{name} launch failed:\n{result.stderr[-3000:]}")
    return [json.loads(path.read_text()) for path in sorted(out.parent.glob(f"{out.name}.rank*.json"))]


def samples_per_second(reports: list[dict]) -> float:
    """All processes' timed samples over the slowest rank's timed seconds."""
    samples = sum(r["samples_per_step"] * r["timed_steps"] for r in reports)
    return samples / max(r["timed_seconds"] for r in reports)


def held(reports: list[dict]) -> dict[str, int]:
    """Each byte count's largest value over the ranks, and the policy's total."""
    counts = {key: max(r["bytes"][key] for r in reports) for key in (*(k for k, _ in BYTE_ROWS), "reference", "whole_parameters")}
    counts["policy"] = max(sum(r["bytes"][k] for k, _ in BYTE_ROWS) for r in reports)
    return counts


def collective_ms(runs: dict[str, list[list[dict]]]) -> dict[str, float]:
    """Median milliseconds of each gloo collective the 2-process launches' ranks timed after training."""
    measured = [r["collectives"] for reports in runs.values() for run in reports for r in run if r["collectives"]]
    return {name: 1e3 * statistics.median(m[name] for m in measured) for name in measured[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=768, help="Hidden width of the digits velocity MLP (pretrained: 256).")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="B per process.")
    parser.add_argument("--group-size", type=int, default=8, help="G.")
    parser.add_argument("--sampling-steps", type=int, default=20, help="Euler steps of the sampler.")
    parser.add_argument("--warmup", type=int, default=5, help="Steps of each launch before the timed ones.")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps of each launch.")
    parser.add_argument("--rounds", type=int, default=2, help="Launches of each kind, in palindromic order.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"Tiny everything ({QUICK}) on tiny digits models in a scratch cache.")
    parser.add_argument("--out", type=Path, default=None, help="Also write every measurement to this JSON file.")
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    torch.set_num_threads(1)  # as each launched process runs, so the machine line says it

    order = [name for r in range(args.rounds) for name in (LAUNCHES if r % 2 == 0 else reversed(LAUNCHES))]
    runs: dict[str, list[list[dict]]] = {name: [] for name in LAUNCHES}
    with tempfile.TemporaryDirectory() as tmp:
        settings = QUICK_SETTINGS if args.quick else {}
        cache = str(Path(tmp) / "cache") if args.quick else None
        load_or_pretrain(PretrainSettings(**settings), cache=cache)  # once here, not in every rank
        for index, name in enumerate(order):
            runs[name].append(launch(name, args, cache, settings, Path(tmp) / f"run{index}"))

    ddp, fsdp = held(runs["DDP, 2"][0]), held(runs[TARGET][0])  # bytes are the same in every round
    speed = {name: statistics.median(samples_per_second(r) for r in reports) for name, reports in runs.items()}
    for name in SHARDED:
        assert all(r["fsdp2"] and r["bytes"]["dtensor_parameters"] == r["bytes"]["tensors"] for r in runs[name][0]), f"{name}: FSDP2 did not shard"
    assert all(r["processes"] == 2 for name in LAUNCHES if name != "1 process" for r in runs[name][0])
    byte_ratio = fsdp["policy"] / ddp["policy"]
    scaling = {name: speed[name] / speed["1 process"] for name in LAUNCHES if name != "1 process"}
    gather_once = speed[TARGET] / speed["FSDP2 per block, gather per forward, 2"]
    collectives = collective_ms(runs)

    n = args.prompts_per_step * args.group_size
    params = ddp["whole_parameters"] // 4
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    print(f"settings: method=adrpo full fine-tuning, MLPVelocityModel width={args.width} depth=3 ({params / 1e6:.2f} M parameters, fp32, "
          f"random init), B={args.prompts_per_step} G={args.group_size} N={n} per process, sampling_steps={args.sampling_steps}, "
          f"AdamW, warmup={args.warmup} steps={args.steps} per launch, rounds={args.rounds} (palindromic), OMP_NUM_THREADS=1, "
          f"gloo, seed={args.seed}{' (quick)' if args.quick else ''}")
    mib = 2**20
    print(f"  bytes per process (largest rank)   {'DDP, 2':>12} {'FSDP2, 2':>12}  FSDP2/DDP (FSDP2: {TARGET})")
    for key, label in (*BYTE_ROWS, ("policy", "policy total"), ("reference", "frozen reference")):
        print(f"  {label:<34} {ddp[key] / mib:8.3f} MiB {fsdp[key] / mib:8.3f} MiB  {fsdp[key] / ddp[key]:.3f}")
    print(f"  gloo collectives of the whole policy ({params * 4 / 1e6:.1f} MB, median of every 2-process launch's 20 calls): "
          + ", ".join(f"{name.replace('_', '-')} {ms:.2f} ms" for name, ms in collectives.items()))
    width = max(map(len, LAUNCHES))
    for name, value in speed.items():
        each = ", ".join(f"{samples_per_second(r):.0f}" for r in runs[name])
        vs = "" if name == "1 process" else f" = {value / speed['1 process']:.3f} x 1 process"
        units = f", {runs[name][0][0]['units']} FSDP2 units" if name in SHARDED else ""
        print(f"  {name:>{width}}: {value:8.1f} samples/s (median of {len(runs[name])}: {each}){vs}{units}")
        slowest = [max(reports, key=lambda r: r["timed_seconds"]) for reports in runs[name]]  # the rank each launch waited for
        step = 1e3 * statistics.median(r["timed_seconds"] / r["timed_steps"] for r in slowest)
        ms = {part: 1e3 * statistics.median(r["parts"][part] for r in slowest) for part in PARTS}
        print(f"  {'':>{width}}  step {step:7.1f} ms: " + ", ".join(f"{part} {ms[part]:.1f}" for part in PARTS)
              + f", rest {step - sum(ms.values()):.1f}")
    if args.out is not None:
        args.out.write_text(json.dumps({
            "settings": {k: v for k, v in vars(args).items() if k != "out"}, "commit": git_commit(), "machine": machine(),
            "bytes": {"DDP, 2": ddp, TARGET: fsdp}, "samples_per_second": speed, "runs": runs,
            "ratio_policy_bytes": byte_ratio, "ratio_reference_bytes": fsdp["reference"] / ddp["reference"],
            "scaling": scaling, "ratio_gather_once": gather_once, "collectives_ms": collectives,
        }, indent=1))
    for name in LAUNCHES:
        if name not in ("1 process", TARGET):
            print(f"ratio {name} / 1 process samples per second: {scaling[name]:.3f} (reported)")
    print(f"ratio FSDP2 per block, gathered once / per forward samples per second: {gather_once:.3f} (reported)")
    print(f"ratio FSDP2 / DDP policy bytes per process (parameters + gradients + AdamW state): {byte_ratio:.3f} (target <= 0.55)")
    print(f"ratio {TARGET} / 1 process samples per second: {scaling[TARGET]:.3f} (target >= 1.7)")

if __name__ == "__main__":
    main()
