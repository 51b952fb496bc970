"""The image grid's Base row under a moving reference (issue 16, section 3): it shows the base model's samples,
not those of the reference the run ended with. One tiny digits run whose reference moves halfway to the policy
after every step; the grid's pixels are read back and compared with a fresh trainer's samples of the untouched
base model and with the moved reference's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adrpo.experiments import grids
from adrpo.experiments.backends import FlowBackend
from adrpo.experiments.engine import run_experiment
from adrpo.experiments.fronts import BASE_LABEL
from adrpo.experiments.report import write_report
from adrpo.experiments.spec import ExperimentSpec
from adrpo.flow.trainer import FlowTrainer
from adrpo.tasks import build_task
from conftest import TINY_SETTINGS

MOVING = {"num_steps": 4, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 2, "learning_rate": 1e-2, "checkpoint_steps": 0,
          "report_to": ["none"], "progress_bar": False, "sync_ref_model": True, "ref_model_sync_steps": 1, "ref_model_mixup_alpha": 0.5}


class ReferenceSamples:
    """What :func:`grids.save_samples` needs of a trainer, sampling ``trainer``'s current (moved) reference for
    every row: the same prompts and noise as the grid's."""

    def __init__(self, trainer: FlowTrainer):
        self.trainer, self.accelerator = trainer, trainer.accelerator

    def sample(self, prompts, *, use_base: bool = False, use_reference: bool = False, **settings) -> torch.Tensor:
        return self.trainer.sample(prompts, use_reference=True, **settings)


def saved_images(trainer, task, directory: Path) -> torch.Tensor:
    """The "images" row :func:`grids.save_samples` writes for ``trainer``: uint8 (B, G, 3, H, W)."""
    directory.mkdir(parents=True)
    return torch.load(directory / grids.save_samples(trainer, task, directory), weights_only=True)["images"]


def grid_row(path: Path, rows: list[str], prompts: list[str], like: torch.Tensor, row: int) -> torch.Tensor:
    """Row ``row`` of the grid image at ``path``, back at the samples' size: uint8 (B, G, 3, H, W)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    _, layout = grids.compose_grid([(label, like.numpy()) for label in rows], prompts)
    out = torch.empty_like(like)
    for b in range(like.shape[0]):
        for g in range(like.shape[1]):
            y, x = layout.origin(row, b, g)
            cell = pixels[y:y + layout.height:layout.scale, x:x + layout.width:layout.scale]  # (H, W, 3): one pixel per block
            out[b, g] = torch.from_numpy(cell.copy()).permute(2, 0, 1)
    return out


def test_the_grid_base_row_is_the_base_model_not_the_moved_reference(tmp_path, digits_cache, monkeypatch):
    trained: list[FlowTrainer] = []
    save_samples = grids.save_samples
    monkeypatch.setattr(grids, "save_samples", lambda trainer, *args, **kw: trained.append(trainer) or save_samples(trainer, *args, **kw))
    spec = ExperimentSpec.from_dict({
        "task": "digits", "task_args": {"settings": dict(TINY_SETTINGS), "cache": str(digits_cache), "eval_samples": 2, "eval_sampling_steps": 2},
        "trainer": MOVING, "eval": {"steps": 4}, "seeds": [0], "output_dir": str(tmp_path / "out"),
        "methods": [{"label": "ADRPO moving", "method": "adrpo"}],
    })
    results = run_experiment(spec)
    grid = write_report(results, tmp_path / "out")["grid"]
    (trainer,) = trained
    monkeypatch.setattr(grids, "save_samples", save_samples)

    task = build_task(spec.task, spec.task_args, seed=0)
    config = FlowBackend.config(spec, spec.configurations()[0], 0, str(tmp_path / "fresh"))
    fresh = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts)  # the base model, never trained
    base = saved_images(fresh, task, tmp_path / "base")
    reference = saved_images(ReferenceSamples(trainer), task, tmp_path / "reference")
    assert not torch.equal(reference, base)  # the reference has moved far enough to show in the pixels

    prompts = list(torch.load(Path(results["runs"][0]["directory"]) / grids.SAMPLES_FILE, weights_only=True)["prompts"])
    shown = grid_row(grid, [BASE_LABEL, "ADRPO moving"], prompts, base, row=0)
    assert torch.equal(shown, base)
    assert not torch.equal(shown, reference)
