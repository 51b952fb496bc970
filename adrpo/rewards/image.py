"""Image rewards and embeddings on CLIP-family models (transformers), for pixel images in [0, 1].

``ClipScore`` is the paper's reward: 100·cos(CLIP image embedding, CLIP text embedding) per
sample (CLIPScore without its clamp at 0). With ``scale="logit"`` the same class gives
PickScore (``logit_scale.exp()``·cos, the PickScore checkpoint being a CLIP model). Samples may
be latents: pass a ``decoder`` (e.g. ``adrpo.flow.models.sd3.LatentDecoder``) and it runs
before scoring. Preprocessing is done in torch (resize to the vision tower's size, CLIP
normalisation), so no image processor or torchvision is needed.

Not here yet: the LAION aesthetic predictor and ImageReward (their heads need weights that
are not available offline to test against).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, *, size: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size) normalised for CLIP."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"CLIP rewards expect images of shape (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    resized = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (resized.clamp(0, 1) - mean) / std


class ClipScore:
    """100·cos(image, text) (or PickScore's logit scale) per sample: (N, *D), N prompts -> (N,).

    Args:
        model_path: a folder or hub id of a ``CLIPModel`` and its tokenizer.
        decoder: optional ``samples -> images`` (e.g. VAE decoding of latents).
        scale: "clip" (×100) or "logit" (×logit_scale.exp(), PickScore).
    """

    def __init__(self, model_path: str, *, decoder: Callable[[torch.Tensor], torch.Tensor] | None = None, scale: str = "clip"):
        from transformers import AutoTokenizer, CLIPModel

        if scale not in ("clip", "logit"):
            raise ValueError(f"scale must be 'clip' or 'logit', got {scale!r}")
        self.model = CLIPModel.from_pretrained(model_path).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.decoder = decoder
        self.size = self.model.config.vision_config.image_size
        self.factor = 100.0 if scale == "clip" else float(self.model.logit_scale.exp())
        self.__name__ = "clip_score" if scale == "clip" else "pick_score"

    @torch.no_grad()
    def image_embeddings(self, samples: torch.Tensor) -> torch.Tensor:
        """(N, *D) samples -> (N, E) unit-norm CLIP image embeddings."""
        images = self.decoder(samples) if self.decoder is not None else samples
        device = self.model.device
        out = self.model.get_image_features(pixel_values=clip_preprocess(images.to(device), size=self.size))
        features = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.model.device)
        out = self.model.get_text_features(**tokens)
        return F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cosine = (self.image_embeddings(samples) * self.text_embeddings(prompts)).sum(dim=-1)
        return self.factor * cosine


class WeightedSum:
    """Σ_k w_k·r_k(samples, prompts) of several image rewards: (N, *D), N prompts -> (N,)."""

    __name__ = "weighted_reward"

    def __init__(self, rewards: Sequence[Callable[[torch.Tensor, Sequence[str]], torch.Tensor]], weights: Sequence[float]):
        if len(rewards) != len(weights) or not rewards:
            raise ValueError(f"need one weight per reward, got {len(rewards)} rewards and {len(weights)} weights")
        self.rewards = list(rewards)
        self.weights = [float(w) for w in weights]

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return sum(w * r(samples, prompts) for r, w in zip(self.rewards, self.weights))
