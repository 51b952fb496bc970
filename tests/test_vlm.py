"""ADRPOTrainer end to end on a tiny vision-language model through TRL's image path (issue 11): conversational
prompts with an image part and an ``image`` column, a text reward, three steps. Parameters move (the vision
tower's included), the loss is finite, the coefficient diagnostics are logged within [β0 − A_max, β0 − A_min],
and the pixel values of the dataset's images reach the policy's vision tower in the gradient-carrying forward."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from datasets import Dataset
from PIL import Image

from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import save_model_and_tokenizer
from adrpo.llm.tiny_vlm import tiny_vlm, tiny_vlm_processor
from adrpo.llm.trainer import ADRPOTrainer
from adrpo.rewards.text import checked, completion_text

CHARS = list("abcdefghijklmnopqrstuvwxyz ?")
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
STEPS = 3


def vowels(prompts, completions, **kwargs):
    """How many vowels the completion's text has: graded, so the completions of a group usually differ."""
    return [float(sum(completion_text(c).count(v) for v in "aeiou")) for c in completions]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    processor = tiny_vlm_processor(CHARS)
    path = save_model_and_tokenizer(tiny_vlm(processor), processor, tmp_path_factory.mktemp("vlm"))
    rows = [
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color"}]}],
         "image": Image.new("RGB", (28, 28), rgb)}
        for rgb in COLORS.values()
    ]
    dataset = Dataset.from_list(rows * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ADRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("out")), bf16=False, gradient_checkpointing=False, use_cpu=True,
            report_to="none", save_strategy="no", disable_tqdm=True, max_steps=STEPS, learning_rate=1e-2,
            per_device_train_batch_size=8, num_generations=4, max_completion_length=4, logging_steps=1, seed=0,
            adv_coef_scale=0.04,  # graded coefficients rather than a saturated clip
        )
        trainer = ADRPOTrainer(model=str(path), reward_funcs=checked(vowels), args=args, train_dataset=dataset)

    calls = []  # (grad enabled, pixel_values) of every vision-tower forward

    def record(module, args_, kwargs, output):
        pixels = kwargs.get("pixel_values", args_[0] if args_ else None)
        calls.append((torch.is_grad_enabled(), None if pixels is None else pixels.detach().clone()))

    handle = trainer.model.model.vision_tower.register_forward_hook(record, with_kwargs=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    handle.remove()
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    logs = [row for row in trainer.state.log_history if "reward" in row]
    return {"trainer": trainer, "args": args, "before": before, "after": after, "logs": logs, "calls": calls}


def test_vlm_parameters_move(run):
    changed = {n for n in run["before"] if not torch.equal(run["before"][n], run["after"][n])}
    vision = {n for n in run["before"] if ".vision_tower." in n}
    # CLIP's post-layernorm sits after the hidden state LLaVA reads (vision_feature_layer=-1): no gradient reaches it
    unreachable = {n for n in vision if "post_layernorm" in n}
    assert set(run["before"]) - changed == unreachable
    assert any("patch_embedding" in n for n in changed)  # the pixels' own weights were trained


def test_vlm_logs_a_finite_loss_and_the_coefficient(run):
    logs = run["logs"]
    assert len(logs) == STEPS
    beta, a_min, a_max = run["args"].beta, run["args"].adv_clip_min, run["args"].adv_clip_max
    for row in logs:
        assert math.isfinite(row["loss"])
        for key in ("adrpo/coef_mean", "adrpo/coef_min", "adrpo/coef_max", "adrpo/frac_clipped"):
            assert key in row and math.isfinite(row[key]), key
        low, mean, high = row["adrpo/coef_min"], row["adrpo/coef_mean"], row["adrpo/coef_max"]
        assert beta - a_max - 1e-6 <= low <= mean + 1e-6 and mean <= high + 1e-6 and high <= beta - a_min + 1e-6
        assert 0.0 <= row["adrpo/frac_clipped"] <= 1.0
    # the rewards differed within some group, so the coefficient differed per completion there
    assert any(row["adrpo/coef_max"] - row["adrpo/coef_min"] > 1e-3 for row in logs)


def test_vlm_pixel_values_reach_the_policy_forward(run):
    training = [pixels for grad, pixels in run["calls"] if grad]
    # one gradient-carrying policy forward per step (8 completions per micro-batch, one micro-batch per step)
    assert len(training) == STEPS
    for pixels in training:
        assert pixels is not None and pixels.shape == (8, 3, 28, 28)
        # the dataset's differently coloured images, not a placeholder: the 8 rows hold more than one image
        assert len({tuple(p.mean(dim=(1, 2)).tolist()) for p in pixels}) > 1
