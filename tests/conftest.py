"""Shared fixtures of the flow, digits and CLI tests: a tiny velocity model, an analytic
prompt-dependent reward, a FlowConfig factory and one tiny digits task built once per session.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from adrpo.experiments.cpu_kernels import pin_cpu_kernels
from adrpo.flow.config import FlowConfig
from adrpo.flow.models.mlp import MLPVelocityModel

# The CPU kernels every experiment command runs (before any test computes): a sweep run in this process then
# equals one the CLI runs in a fresh process, on an AVX-512 CPU too.
pin_cpu_kernels()
# On a small shared machine torch's intra-op threads spin against each other; one thread is
# several times faster for these tiny models and keeps every run deterministic.
torch.set_num_threads(1)

VOCAB = [["a", "b"], ["x", "y"]]
PROMPTS = ["a x", "b y", "a y", "b x"]
DATA_DIM = 4

# Small enough to pretrain in a few seconds, large enough that the classifier separates prompts.
TINY_SETTINGS = dict(flow_steps=150, classifier_steps=150, autoencoder_steps=150, flow_width=64)


def target(prompt: str) -> float:
    """Where the analytic reward wants a prompt's samples: +1 for "a ...", −1 for "b ..."."""
    return 1.0 if prompt.split()[0] == "a" else -1.0


def target_reward(samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """r(x, c) = −mean_d (x_d − target(c))²: (N, D), N prompts -> (N,)."""
    goal = torch.tensor([target(p) for p in prompts], device=samples.device).unsqueeze(1)  # (N, 1)
    return -(samples - goal).pow(2).mean(dim=1)


def tiny_model(seed: int = 0) -> MLPVelocityModel:
    torch.manual_seed(seed)
    return MLPVelocityModel(DATA_DIM, VOCAB, width=32, depth=1)


def make_config(output_dir: Path, **overrides) -> FlowConfig:
    values = dict(
        method="adrpo",
        prompts_per_step=2,
        group_size=4,
        sampling_steps=4,
        num_steps=4,
        learning_rate=1e-2,
        checkpoint_steps=0,
        report_to=["none"],
        progress_bar=False,
        output_dir=str(output_dir),
    )
    values.update(overrides)
    return FlowConfig(**values)


def fixed_noise(n: int, seed: int = 123) -> torch.Tensor:
    return torch.randn((n, DATA_DIM), generator=torch.Generator().manual_seed(seed))


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.fixture
def base_model() -> MLPVelocityModel:
    return tiny_model()


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory) -> Path:
    """A cache directory holding the tiny pretrained digits models (trained once)."""
    from adrpo.tasks.digits import PretrainSettings, load_or_pretrain

    cache = tmp_path_factory.mktemp("adrpo-cache")
    load_or_pretrain(PretrainSettings(**TINY_SETTINGS), cache=cache)
    return cache


@pytest.fixture(scope="session")
def digits_task(digits_cache):
    from adrpo.tasks.digits import DigitsTask, PretrainSettings

    return DigitsTask(PretrainSettings(**TINY_SETTINGS), eval_samples=4, eval_sampling_steps=4, cache=digits_cache)


@pytest.fixture
def trl_trainers(monkeypatch) -> list:
    """Every transformers/TRL trainer (GRPOTrainer, ADRPOTrainer, ...) whose train() ran in this process."""
    import transformers

    seen = []
    real_train = transformers.Trainer.train

    def train(self, *args, **kwargs):
        out = real_train(self, *args, **kwargs)
        seen.append(self)
        return out

    monkeypatch.setattr(transformers.Trainer, "train", train)
    return seen


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch, tmp_path):
    """Nothing a test does may train into or read from ~/.cache/adrpo."""
    monkeypatch.setenv("ADRPO_CACHE", str(tmp_path / "default-cache"))



IMAGE_PROMPTS = ["a red cat", "a blue dog"]
IMAGE_LORA = dict(lora_rank=2, lora_alpha=2, lora_target_modules=["to_q", "to_k", "to_v", "to_out.0"])


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> tuple[Path, Path]:
    """(pipeline folder, CLIP folder) of a tiny random SD3 pipeline, written once."""
    from adrpo.tasks.text_to_image import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> tuple[Path, Path]:
    """(pipeline folder, CLIP folder) of a tiny random FLUX pipeline, written once."""
    from adrpo.tasks.text_to_image import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


def tiny_image_task(folders: tuple[Path, Path], **overrides):
    """A text_to_image task on a tiny pipeline with its CLIP-score reward, 8-px images."""
    from adrpo.tasks import build_task

    pipeline_dir, clip_dir = folders
    args = dict(pipeline=str(pipeline_dir), reward={"type": "clip_score", "model": str(clip_dir)}, prompts=IMAGE_PROMPTS,
                resolution=8, max_sequence_length=8, eval_samples=2, eval_sampling_steps=2)
    return build_task("text_to_image", {**args, **overrides}, seed=0)


def tiny_image_train_config(folders: tuple[Path, Path], output_dir: Path, **trainer) -> dict:
    """An `fm train` config (as a mapping) of 2 LoRA steps of ADRPO-FM on a tiny pipeline."""
    pipeline_dir, clip_dir = folders
    return {
        "task": "text_to_image",
        "task_args": {"pipeline": str(pipeline_dir), "reward": {"type": "clip_score", "model": str(clip_dir)}, "prompts": IMAGE_PROMPTS,
                      "resolution": 8, "max_sequence_length": 8, "eval_samples": 2, "eval_sampling_steps": 2},
        "eval_steps": 1,
        "trainer": {"method": "adrpo", "num_steps": 2, "prompts_per_step": 2, "group_size": 2, "sampling_steps": 2, "checkpoint_steps": 1,
                    "output_dir": str(output_dir), "report_to": ["none"], "progress_bar": False, **IMAGE_LORA, **trainer},
    }


# Digits models small enough for the multi-process launch tests to pretrain once in seconds.
LAUNCH_SETTINGS = {"flow_steps": 100, "classifier_steps": 100, "autoencoder_steps": 100, "flow_width": 64}


def write_launch_config(path: Path, cache: Path, output_dir: Path, num_steps: int, *, eval_steps: int = 0, **trainer) -> Path:
    """An `fm train` YAML on the launch-size digits task (checkpoints every 2 steps)."""
    import yaml

    path.write_text(yaml.safe_dump({
        "task": "digits",
        "task_args": {"settings": LAUNCH_SETTINGS, "cache": str(cache), "eval_samples": 2},
        "eval_steps": eval_steps,
        "trainer": {"method": "adrpo", "num_steps": num_steps, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 4,
                    "checkpoint_steps": 2, "output_dir": str(output_dir), "report_to": ["none"], "progress_bar": False, **trainer},
    }))
    return path


def launch_fm_train(launch_args: list[str], config: Path, *extra: str, env: dict | None = None, timeout: int = 240) -> None:
    """`accelerate launch LAUNCH_ARGS -m adrpo.cli fm train --config CONFIG EXTRA`, which must succeed."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free rendezvous port: back-to-back launches must not share 29500
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--main_process_port", str(port), *launch_args,
           "-m", "adrpo.cli", "fm", "train", "--config", str(config), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
