"""ADRPOTrainer under parameter sharding on 2 CPU processes, against one process at the same global batch: the
shipped fsdp2.yaml (gloo; accelerate gives a CPU launch FSDP through adrpo.cpu_fsdp) and deepspeed_zero3.yaml (with
`use_cpu`, `DS_ACCELERATOR=cpu`), each on a text model and on the tiny Qwen2-Audio path (tests/launch_llm_sharded.py).

What makes the runs comparable number for number: the reward is a function of a row's place in the global
generation batch (launch_llm_ddp.position_reward), so the advantages and every coefficient are those of one process;
and each completion is sampled alone under a seed of its global row (launch_llm_sharded.row_seeded_generate), so
both runs score the same completions and the loss is comparable too. TRL normalises the loss by the global token
count, so the logged loss and gradient norm agree to float32 summation order (measured: 1e-8 absolute, 5e-8
relative). The coefficients' min and max are the same float32 element: exact. The final weights agree to 1e-4
absolute, 1 % of one AdamW step at the runs' learning rate of 1e-2 (measured: FSDP2 2.4e-7 text, 3.1e-5 audio; ZeRO-3
2.8e-6, 2.4e-5; Adam divides tiny gradients by their own scale, so float32 noise in a near-zero gradient element
becomes a visible step). Without adrpo.llm.audio.unshard_output_head the audio run's weights are 0.03 off under FSDP2.

Not compared: TRL's logged ``kl`` and ``entropy``, token-weighted means per micro-batch averaged over the
micro-batches, whose membership depends on the world size (TRL shuffles each process's share on its own): at the
same weights they differ by ~1 % between the runs.

Not covered here: ZeRO-3's ``zero3_init_flag`` (the recipe sets it off), vLLM generation, PEFT under sharding, a GPU.
"""

import json
import os
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor

pytest.importorskip("deepspeed")

SCRIPT = Path(__file__).with_name("launch_llm_sharded.py")
CASES = {"text": 3, "audio": 2}  # case: optimizer steps (launch_llm_sharded.train)
ENGINES = {"fsdp2": ("DistributedType.FSDP", "dtensor"), "zero3": ("DistributedType.DEEPSPEED", "zero3")}
EXACT = ("adrpo/coef_min", "adrpo/coef_max", "adrpo/frac_clipped", "adrpo/frac_negative", "reward")
CLOSE = ("loss", "adrpo/coef_mean", "grad_norm")


def shipped_config(name: str, path: Path, **cpu: object) -> Path:
    """The shipped accelerate config ``name`` on 2 CPU processes without mixed precision (and ``cpu``'s keys)."""
    values = yaml.safe_load((resources.files("adrpo") / "configs" / "accelerate" / name).read_text())
    values.update(num_processes=2, mixed_precision="no", **cpu)
    path.write_text(yaml.safe_dump(values))
    return path


def run(launch: list[str], models: dict[str, Path], out: Path, per_device_batch: int, env: dict[str, str] | None = None) -> None:
    """tests/launch_llm_sharded.py on both cases, as ``launch`` starts it; it must succeed."""
    cmd = [*launch, str(SCRIPT), str(models["text"]), str(models["audio"]), str(out), str(per_device_batch)]
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}", **(env or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def accelerate_launch(*args: str) -> list[str]:
    with socket.socket() as probe:  # a free rendezvous port: other launch tests must not share 29500
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--main_process_port", str(port), *args]


def reports(out: Path, case: str, ranks: int) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    return [(json.loads((out / f"{case}-rank-{r}.json").read_text()), torch.load(out / f"{case}-rank-{r}.pt")) for r in range(ranks)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    """The two tiny models, saved, and their one-process runs (12 completions per micro-batch, 2 micro-batches)."""
    root = tmp_path_factory.mktemp("llm-sharded")
    tokenizer = char_tokenizer(list("0123456789+="))
    models = {"text": save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2),
                                               tokenizer, root / "text-model")}
    processor = tiny_audio_processor(list("clipabd 0123456789"))
    models["audio"] = save_model_and_tokenizer(tiny_audio_lm(processor), processor, root / "audio-model")
    run([sys.executable], models, root / "one", 12)
    return models, root / "one"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ENGINES)
def test_sharded_runs_equal_the_one_process_run(engine, one_process, tmp_path):
    models, one_dir = one_process
    if engine == "fsdp2":  # each decoder and audio encoder layer a sharding unit (the models' _no_split_modules)
        config = shipped_config("fsdp2.yaml", tmp_path / "fsdp2.yaml")
        run(accelerate_launch("--config_file", str(config)), models, tmp_path, 6)
    else:
        config = shipped_config("deepspeed_zero3.yaml", tmp_path / "zero3.yaml", use_cpu=True)
        run(accelerate_launch("--config_file", str(config)), models, tmp_path, 6, env={"DS_ACCELERATOR": "cpu"})
    distributed_type, holding = ENGINES[engine]
    for case, steps in CASES.items():
        [(one, one_weights)] = reports(one_dir, case, 1)
        two = reports(tmp_path, case, 2)
        for run_report, _ in two:
            assert run_report["distributed_type"] == distributed_type and run_report["world_size"] == run_report["num_processes"] == 2
            for module in ("policy", "reference"):  # every parameter of both held in shards
                assert run_report[module][holding] == run_report[module]["total"] > 0, (case, module)
            assert run_report["changed"] == run_report["trainable"] > 0, case
            # each generation call gathers every FSDP2 parameter group once (TRL alone: per token of every row)
            gathered = run_report["generation_gathers"]
            assert len(gathered) == steps and set(gathered) == ({run_report["fsdp_groups"]} if engine == "fsdp2" else {0}), case
        # the same completions: process r generated the r-th half of each step's global batch
        per_step = len(one["completions"]) // steps
        for step in range(steps):
            rows = slice(step * per_step // 2, (step + 1) * per_step // 2)
            assert one["completions"][step * per_step:(step + 1) * per_step] == two[0][0]["completions"][rows] + two[1][0]["completions"][rows]
        logs = two[0][0]["logs"]
        assert [row["step"] for row in logs] == [row["step"] for row in one["logs"]] == list(range(1, steps + 1))
        for row_one, row_two in zip(one["logs"], logs):
            for key in EXACT:
                assert row_two[key] == pytest.approx(row_one[key], abs=1e-7), (case, row_one["step"], key)
            for key in CLOSE:
                assert row_two[key] == pytest.approx(row_one[key], rel=1e-6, abs=1e-7), (case, row_one["step"], key)
            assert row_two["adrpo/coef_min"] == row_one["adrpo/coef_min"] and row_two["adrpo/coef_max"] == row_one["adrpo/coef_max"]
        assert any(row["adrpo/frac_clipped"] > 0 and row["adrpo/coef_min"] < 0 for row in one["logs"])  # not vacuous
        (_, rank0), (_, rank1) = two
        assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)  # one model, gathered on both processes
        assert rank0.keys() == one_weights.keys()
        gap = max((rank0[name] - one_weights[name]).abs().max().item() for name in rank0)
        assert gap < 1e-4, (case, gap)
