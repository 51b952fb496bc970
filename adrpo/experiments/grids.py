"""Image grids of a flow experiment's final samples: the paper's Figure 2 analog.

Each flow run writes ``samples.pt`` in its directory (:func:`save_samples`)::

    {"prompts": [B held-out prompts],
     "images": uint8 (B, G, 3, H, W)        the final policy's samples,
     "base_images": uint8 (B, G, 3, H, W)}  the base model's, same noise (with a moving reference
                                            not the reference the run ended with: ``sample(use_base=True)``)

drawn from the first G ≤ 4 noises of each prompt in the task's fixed evaluation noise, so every
row of a grid differs only by the model.

The grid (``grid.png``, :func:`write_grid`) is of one seed (the first): rows = configurations
with the base model first, columns = held-out prompts × G samples, labels on the left and
prompts on top; small images are upscaled by an integer factor, nearest neighbour, to about
64 px (an 8×8 digit becomes 64×64, one 8×8 block per pixel), so the strokes stay visible.

Row selection (:func:`select_rows`, at most ``max_rows`` = 12 rows with the base): every
configuration when they fit; otherwise the base and, per family in spec order, its first,
middle and last configuration; if that still does not fit, per family its first and last, then
its first only, then the first ``max_rows`` rows of that.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adrpo.experiments.fronts import BASE_LABEL

SAMPLES_FILE = "samples.pt"
PER_PROMPT = 4
MAX_ROWS = 12
TARGET_SIDE = 64  # px an image is upscaled towards (integer factors only, never down)
FONT_SIZE = 14
LABEL_WIDTH = 330  # px a row label may take before it wraps (a 64-px row holds three lines of it)
BACKGROUND = 255


def save_samples(trainer, task, directory: Path, *, per_prompt: int = PER_PROMPT) -> str:
    """Write the final and base policies' samples of the task's held-out prompts to
    ``directory/samples.pt`` (see the module docstring); returns the file name.

    ``task`` needs ``eval_prompts`` (prompt-major, ``eval_group`` of each), ``eval_x0``,
    ``eval_sampling_steps`` and ``images(samples) -> (N, 3, H, W)`` in [0, 1].
    """
    import torch

    group = task.eval_group
    prompts = list(task.eval_prompts[::group])
    keep = min(per_prompt, group)
    index = torch.tensor([b * group + g for b in range(len(prompts)) for g in range(keep)])  # (B·G,)
    chosen = [task.eval_prompts[i] for i in index.tolist()]
    x0 = task.eval_x0[index]

    def images(use_base: bool) -> torch.Tensor:
        x1 = trainer.sample(chosen, x0=x0, num_steps=task.eval_sampling_steps, use_base=use_base)
        pixels = (task.images(x1).float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()  # (B·G, 3, H, W)
        return pixels.view(len(prompts), keep, *pixels.shape[1:])  # (B, G, 3, H, W)

    blob = {"prompts": prompts, "images": images(False), "base_images": images(True)}
    if trainer.accelerator.is_main_process:
        path = Path(directory) / SAMPLES_FILE
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
    return SAMPLES_FILE


def select_rows(families: dict[str, list[str]], *, max_rows: int = MAX_ROWS) -> list[str]:
    """The grid's rows: the base label, then configurations by the module docstring's rule."""
    every = [label for labels in families.values() for label in labels]
    if len(every) + 1 <= max_rows:
        return [BASE_LABEL, *every]
    rows: list[str] = []
    for picks in (lambda n: (0, (n - 1) // 2, n - 1), lambda n: (0, n - 1), lambda n: (0,)):
        rows = [BASE_LABEL] + [labels[i] for labels in families.values() for i in sorted(set(picks(len(labels))))]
        if len(rows) <= max_rows:
            return rows
    return rows[:max_rows]


def load_samples(run: dict[str, Any]) -> dict[str, Any] | None:
    """A run's samples.pt (None when the run has none)."""
    import torch

    if not run.get("samples"):
        return None
    path = Path(run["directory"]) / run["samples"]
    return torch.load(path, weights_only=True) if path.is_file() else None


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid: where the top-left corner of each sample's image lies."""

    rows: int
    prompts: int
    per_prompt: int
    height: int  # of one upscaled image
    width: int
    scale: int
    left: int
    top: int
    pad: int = 6
    gap: int = 2
    group_gap: int = 10
    row_gap: int = 4

    @property
    def group_width(self) -> int:
        return self.per_prompt * self.width + (self.per_prompt - 1) * self.gap

    def origin(self, row: int, prompt: int, sample: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of ``sample`` of ``prompt`` in ``row``."""
        y = self.top + row * (self.height + self.row_gap)
        x = self.left + prompt * (self.group_width + self.group_gap) + sample * (self.width + self.gap)
        return y, x

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole grid in pixels."""
        height = self.top + self.rows * self.height + (self.rows - 1) * self.row_gap + self.pad
        width = self.left + self.prompts * self.group_width + (self.prompts - 1) * self.group_gap + self.pad
        return height, width


def _font(size: int):
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), size)


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines at most ``width`` px wide (a long word stays whole)."""
    for chars in range(max(len(text), 1), 0, -1):
        lines = textwrap.wrap(text, chars) or [""]
        if all(font.getlength(line) <= width for line in lines) or chars == 1:
            return lines
    return [text]


def compose_grid(rows: Sequence[tuple[str, np.ndarray]], prompts: Sequence[str]):
    """(PIL RGB image, GridLayout) of labelled rows of uint8 (B, G, 3, H, W) images; a label wider than
    :data:`LABEL_WIDTH` wraps onto lines centred on its row."""
    from PIL import Image, ImageDraw

    _, per_prompt, _, h, w = rows[0][1].shape
    scale = max(1, TARGET_SIDE // max(h, w))
    font = _font(FONT_SIZE)
    line = FONT_SIZE + 4
    labels = [_wrap(label, font, LABEL_WIDTH) for label, _ in rows]
    label_width = max(int(font.getlength(text)) for lines in labels for text in lines)
    provisional = GridLayout(len(rows), len(prompts), per_prompt, h * scale, w * scale, scale, 0, 0)
    wrapped = [_wrap(prompt, font, provisional.group_width) for prompt in prompts]
    pad = provisional.pad
    layout = GridLayout(len(rows), len(prompts), per_prompt, h * scale, w * scale, scale,
                        left=pad + label_width + 8, top=pad + line * max(len(lines) for lines in wrapped) + 6)
    canvas = np.full((*layout.size, 3), BACKGROUND, dtype=np.uint8)
    for r, (_, images) in enumerate(rows):
        for b in range(len(prompts)):
            for g in range(per_prompt):
                y, x = layout.origin(r, b, g)
                block = images[b, g].transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)  # (H·s, W·s, 3)
                canvas[y:y + layout.height, x:x + layout.width] = block
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for r, lines in enumerate(labels):
        y, _ = layout.origin(r, 0, 0)
        first = y + layout.height // 2 - (len(lines) - 1) * line // 2  # the lines centred on the row
        for i, text in enumerate(lines):
            draw.text((pad, first + i * line), text, fill=(0, 0, 0), font=font, anchor="lm")
    for b, lines in enumerate(wrapped):
        _, x = layout.origin(0, b, 0)
        for i, text in enumerate(lines):
            draw.text((x + layout.group_width // 2, pad + i * line), text, fill=(0, 0, 0), font=font, anchor="ma")
    return image, layout


def write_grid(results: dict[str, Any], path: Path, *, max_rows: int = MAX_ROWS) -> dict[str, Any] | None:
    """Write the first seed's grid to ``path``; returns {"seed", "rows", "notes"}, or None when
    no run of that seed has samples."""
    runs = results["runs"]
    if not runs:
        return None
    seed = (results.get("spec", {}).get("seeds") or [runs[0]["seed"]])[0]
    loaded: dict[str, dict[str, Any]] = {}
    families: dict[str, list[str]] = {}
    notes = []
    for run in runs:
        if run["seed"] != seed:
            continue
        blob = load_samples(run)
        if blob is None:
            notes.append(f"{run['label']!r} has no samples file for seed {seed}")
            continue
        first = next(iter(loaded.values()), blob)
        if list(blob["prompts"]) != list(first["prompts"]) or blob["images"].shape != first["images"].shape:
            notes.append(f"{run['label']!r}: its samples are of other prompts or another shape than the first run's; left out")
            continue
        loaded[run["label"]] = blob
        families.setdefault(run["family"], []).append(run["label"])
    if not loaded:
        return None
    first = next(iter(loaded.values()))
    labels = select_rows(families, max_rows=max_rows)
    if "base_images" not in first:
        notes.append("the samples carry no base-model images: no Base row")
        labels = [label for label in labels if label != BASE_LABEL]
    rows = [(label, (first["base_images"] if label == BASE_LABEL else loaded[label]["images"]).numpy()) for label in labels]
    image, _ = compose_grid(rows, list(first["prompts"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return {"seed": seed, "rows": [label for label, _ in rows], "prompts": list(first["prompts"]), "notes": notes}
