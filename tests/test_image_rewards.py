"""Image rewards on tiny random models: the LAION aesthetic head (both formats), ImageReward
through a stand-in package, the digits reward on images, and the text_to_image task's reward
and ClipDiversity wiring."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from adrpo.rewards.image import AestheticScore, ClipEmbedder, ImageRewardScore, clip_preprocess, resolve_file
from adrpo.tasks import build_task
from conftest import TINY_SETTINGS


def improved_head_state(width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the improved aesthetic predictor's keys and shapes."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {"0": (1024, width), "2": (128, 1024), "4": (64, 128), "6": (16, 64), "7": (1, 16)}
    state = {}
    for index, (out, inp) in sizes.items():
        state[f"layers.{index}.weight"] = torch.randn(out, inp, generator=generator) / inp**0.5
        state[f"layers.{index}.bias"] = torch.randn(out, generator=generator)
    return state


def test_improved_aesthetic_head_is_the_affine_chain_on_unit_embeddings(tiny_sd3, tmp_path):
    clip_dir = str(tiny_sd3[1])
    state = improved_head_state(8)
    torch.save(state, tmp_path / "head.pth")
    reward = AestheticScore(clip_dir, str(tmp_path / "head.pth"))
    images = torch.rand(3, 3, 16, 16)
    embeddings = ClipEmbedder(clip_dir).image_embeddings(images)
    expected = embeddings
    for index in ("0", "2", "4", "6", "7"):  # no activations between the layers, as trained
        expected = expected @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    scores = reward(images, ["ignored"] * 3)
    torch.testing.assert_close(scores, expected.squeeze(-1))
    assert scores.shape == (3,)


def test_linear_aesthetic_head_from_safetensors_and_bad_heads(tiny_sd3, tmp_path):
    from safetensors.torch import save_file

    clip_dir = str(tiny_sd3[1])
    weight, bias = torch.randn(1, 8), torch.randn(1)
    save_file({"weight": weight, "bias": bias}, str(tmp_path / "linear.safetensors"))
    reward = AestheticScore(clip_dir, str(tmp_path / "linear.safetensors"))
    images = torch.rand(2, 3, 16, 16)
    expected = ClipEmbedder(clip_dir).image_embeddings(images) @ weight.T + bias
    torch.testing.assert_close(reward(images, ["a", "b"]), expected.squeeze(-1))

    torch.save(improved_head_state(768), tmp_path / "l14.pth")
    with pytest.raises(ValueError, match=r"takes 768-d embeddings but the CLIP model .* gives 8-d"):
        AestheticScore(clip_dir, str(tmp_path / "l14.pth"))
    torch.save({"fc.weight": torch.zeros(1, 8)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"not a LAION aesthetic head \(keys \['fc.weight'\]"):
        AestheticScore(clip_dir, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="head: no file at 'missing.pth'"):
        AestheticScore(clip_dir, "missing.pth")


def test_hub_file_specs_go_through_huggingface_hub(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []
    target = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    target.write_bytes(b"")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: calls.append((repo_id, filename)) or str(target))
    assert resolve_file("camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth", "head") == target
    assert calls == [("camenduru/improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth")]

    def offline(repo_id, filename):
        raise OSError("no connection")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError, match=r"head: 'runs/missing/head.pth' is not a local file and could not be fetched .*no connection"):
        resolve_file("runs/missing/head.pth", "head")


class FakeTokens:
    def __init__(self, prompts, max_length):
        self.input_ids = torch.tensor([[len(p)] * max_length for p in prompts])
        self.attention_mask = torch.ones_like(self.input_ids)

    def to(self, device):
        return self


class FakeImageReward(torch.nn.Module):
    """The parts of ImageReward's model the wrapper uses: ``blip.tokenizer`` and ``score_gard``."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.blip = types.SimpleNamespace(tokenizer=self.tokenize)

    def tokenize(self, prompts, padding, truncation, max_length, return_tensors):
        self.calls.append(("tokenize", list(prompts), padding, max_length))
        return FakeTokens(prompts, max_length)

    def score_gard(self, prompt_ids, prompt_attention_mask, image):
        self.calls.append(("score", tuple(image.shape)))
        return (prompt_ids[:, :1].float() + image.mean(dim=(1, 2, 3)).unsqueeze(1))  # (N, 1)


def test_image_reward_batches_prompts_and_224px_images(monkeypatch):
    fake = FakeImageReward()
    loads = []
    module = types.SimpleNamespace(load=lambda name, device, med_config: loads.append((name, device, med_config)) or fake)
    monkeypatch.setitem(sys.modules, "ImageReward", module)
    reward = ImageRewardScore("ImageReward-v1.0", med_config="med.json", device="cpu")
    assert loads == [("ImageReward-v1.0", "cpu", "med.json")]
    images = torch.rand(3, 3, 32, 32)
    scores = reward(images, ["a", "bb", "ccc"])
    pixels = clip_preprocess(images, size=224)
    torch.testing.assert_close(scores, torch.tensor([1.0, 2.0, 3.0]) + pixels.mean(dim=(1, 2, 3)))
    assert fake.calls == [("tokenize", ["a", "bb", "ccc"], "max_length", 35), ("score", (3, 3, 224, 224))]


def test_image_reward_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # import fails
    with pytest.raises(ImportError, match="pip install image-reward"):
        ImageRewardScore()


def test_digits_image_reward_reads_an_upscaled_digit_like_the_digits_reward(digits_cache, monkeypatch):
    from sklearn.datasets import load_digits

    from adrpo.tasks.digits import DigitsImageReward

    monkeypatch.setenv("ADRPO_CACHE", str(digits_cache))
    reward = DigitsImageReward.pretrained(TINY_SETTINGS, temperature=4.0)
    digits = torch.tensor(load_digits().data[:4], dtype=torch.float32) / 16  # (4, 64) in [0, 1]
    images = F.interpolate(digits.view(4, 1, 8, 8), scale_factor=4, mode="nearest").expand(-1, 3, -1, -1)  # (4, 3, 32, 32)
    prompts = ["a bold zero", "a thin one", "a bold two", "a thin three"]
    expected = reward.reward(digits * 2 - 1, prompts)
    torch.testing.assert_close(reward(images, prompts), expected)
    with pytest.raises(ValueError, match=r"images of shape \(N, 3, H, W\).*\(4, 64\)"):
        reward(digits, prompts)
    with pytest.raises(ValueError, match="'a red cat' is not a digits prompt"):
        reward(images[:1], ["a red cat"])


def test_task_with_a_prompt_free_reward_needs_a_diversity_model(tiny_sd3, tmp_path, digits_cache, monkeypatch):
    pipeline_dir, clip_dir = tiny_sd3
    monkeypatch.setenv("ADRPO_CACHE", str(digits_cache))
    args = dict(pipeline=str(pipeline_dir), prompts=["a bold seven", "a thin one"], resolution=8, max_sequence_length=8,
                eval_samples=2, eval_sampling_steps=2, reward={"type": "digits", "settings": TINY_SETTINGS})
    with pytest.raises(ValueError, match="set task_args.diversity_model"):
        build_task("text_to_image", args, seed=0)
    task = build_task("text_to_image", {**args, "diversity_model": str(clip_dir)}, seed=0)
    latents = torch.randn(2, 4, 8, 8)
    rewards = task.reward(latents, ["a bold seven", "a thin one"])
    assert rewards.shape == (2,) and bool(((rewards > 0) & (rewards < 1)).all())
    torch.testing.assert_close(task.embed(latents).norm(dim=-1), torch.ones(2))
    torch.save(improved_head_state(8), tmp_path / "head.pth")
    mixed = build_task("text_to_image", {**args, "reward": [{"type": "digits", "settings": TINY_SETTINGS, "weight": 2.0},
                                                             {"type": "aesthetic", "model": str(clip_dir), "head": str(tmp_path / "head.pth")}]}, seed=0)
    digits_part, aesthetic_part = (r(latents, ["a bold seven", "a thin one"]) for r in mixed.reward.rewards)
    torch.testing.assert_close(mixed.reward(latents, ["a bold seven", "a thin one"]), 2 * digits_part + aesthetic_part)
    assert mixed.clip is mixed.reward.rewards[1]  # ClipDiversity from the aesthetic reward's CLIP


def test_latents_are_decoded_once_for_all_rewards_and_the_diversity_embedding(tiny_sd3, tmp_path):
    task = build_task("text_to_image", dict(pipeline=str(tiny_sd3[0]), prompts=["a red cat"], resolution=8, max_sequence_length=8,
                                            reward=[{"type": "clip_score", "model": str(tiny_sd3[1])},
                                                    {"type": "pick_score", "model": str(tiny_sd3[1]), "weight": 0.5}]), seed=0)
    calls = []
    decode = task.pipeline.vae.decode
    task.pipeline.vae.decode = lambda *args, **kwargs: calls.append(1) or decode(*args, **kwargs)
    latents = torch.randn(3, 4, 8, 8)
    first = task.reward(latents, ["a red cat"] * 3)
    task.embed(latents)
    task.embed(latents[:2])  # another view: decoded anew
    assert len(calls) == 2
    latents.mul_(2)  # modified in place: decoded anew, and the rewards follow
    assert not torch.allclose(task.reward(latents, ["a red cat"] * 3), first)
    assert len(calls) == 3
