"""Image rewards and embeddings for pixel images in [0, 1], on CLIP-family models (transformers).

- :class:`ClipScore`: the paper's reward, 100·cos(CLIP image embedding, CLIP text embedding)
  per sample (CLIPScore without its clamp at 0). With ``scale="logit"`` the same class gives
  PickScore (``logit_scale.exp()``·cos, the PickScore checkpoint being a CLIP model).
- :class:`AestheticScore`: the LAION aesthetic predictor, a linear or MLP head on unit-norm
  CLIP ViT-L/14 image embeddings (prompt-free; about 1 to 10).
- :class:`ImageRewardScore`: ImageReward (BLIP + MLP, ``pip install image-reward``).
- :class:`WeightedSum`: Σ w_k·r_k of any of them.

Samples may be latents: pass a ``decoder`` (e.g.
``adrpo.flow.models.diffusers_common.LatentDecoder``) and it runs before scoring.
Preprocessing is done in torch (resize to the vision tower's size, CLIP normalisation), so no
image processor or torchvision is needed; it is close to, not bit-identical with, the PIL
pipelines of the original repositories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adrpo.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Decoder = Callable[[torch.Tensor], torch.Tensor]


def clip_preprocess(images: torch.Tensor, *, size: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size) normalised for CLIP."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"CLIP rewards expect images of shape (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    resized = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (resized.clamp(0, 1) - mean) / std


class ClipEmbedder:
    """Unit-norm CLIP image and text embeddings of a transformers ``CLIPModel``.

    Args:
        model_path: a folder or hub id of a ``CLIPModel``.
        tokenizer_path: where its tokenizer is (default: ``model_path``; PickScore keeps it
            in the CLIP-H repository).
        decoder: optional ``samples -> images`` (e.g. VAE decoding of latents).
    """

    def __init__(self, model_path: str, *, tokenizer_path: str | None = None, decoder: Decoder | None = None):
        from transformers import CLIPModel

        self.model = CLIPModel.from_pretrained(model_path).eval().requires_grad_(False)
        self.tokenizer_path = tokenizer_path or model_path
        self._tokenizer = None
        self.decoder = decoder
        self.size = self.model.config.vision_config.image_size

    @property
    def tokenizer(self):
        """Loaded on first use: prompt-free rewards (aesthetics) never need it."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    def to(self, device: torch.device | str) -> ClipEmbedder:
        self.model.to(device)
        return self

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
        """N prompts -> (N, E) unit-norm CLIP text embeddings."""
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.model.device)
        out = self.model.get_text_features(**tokens)
        return F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)


class ClipScore(ClipEmbedder):
    """100·cos(image, text) (or PickScore's logit scale) per sample: (N, *D), N prompts -> (N,).

    Args (besides :class:`ClipEmbedder`'s):
        scale: "clip" (×100) or "logit" (×logit_scale.exp(), PickScore).
    """

    def __init__(self, model_path: str, *, tokenizer_path: str | None = None, decoder: Decoder | None = None, scale: str = "clip"):
        if scale not in ("clip", "logit"):
            raise ConfigError(f"scale must be 'clip' or 'logit', got {scale!r}")
        super().__init__(model_path, tokenizer_path=tokenizer_path, decoder=decoder)
        self.factor = 100.0 if scale == "clip" else float(self.model.logit_scale.exp())
        self.__name__ = "clip_score" if scale == "clip" else "pick_score"

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cosine = (self.image_embeddings(samples) * self.text_embeddings(prompts)).sum(dim=-1)
        return self.factor * cosine


def resolve_file(spec: str, field: str) -> Path:
    """A local file, or ``owner/repo/file`` fetched through huggingface_hub's cache."""
    path = Path(spec)
    if path.is_file():
        return path
    parts = spec.split("/")
    if len(parts) < 3 or spec.startswith((".", "/")):
        raise ConfigError(f"{field}: no file at {spec!r} (give a local file or a hub 'owner/repo/file')")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:])))
    except Exception as err:  # offline, unknown repo or file: all mean the spec is unusable here
        raise ConfigError(f"{field}: {spec!r} is not a local file and could not be fetched from the hub as owner/repo/file ({err})") from err


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (tensors only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def aesthetic_head(state: dict[str, torch.Tensor], *, source: str) -> nn.Module:
    """The LAION aesthetic head for a state dict: the v1 linear probe (keys weight, bias) or
    the improved predictor's MLP (keys layers.{0,2,4,6,7}.*: E → 1024 → 128 → 64 → 16 → 1,
    dropouts between and no activations, as trained)."""
    if set(state) == {"weight", "bias"}:
        head = nn.Linear(state["weight"].shape[1], 1)
    elif "layers.0.weight" in state:
        width = state["layers.0.weight"].shape[1]
        head = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                             nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
        state = {key.removeprefix("layers."): value for key, value in state.items()}
    else:
        raise ConfigError(f"{source}: not a LAION aesthetic head (keys {sorted(state)[:6]}...)")
    head.load_state_dict(state)
    return head.eval().requires_grad_(False)


class AestheticScore(ClipEmbedder):
    """LAION aesthetic score per sample: head(unit-norm CLIP image embedding), (N, *D) -> (N,).

    Args:
        model_path: the CLIP model the head was trained on (``openai/clip-vit-large-patch14``).
        head_path: the head's weights: a ``.pth``/``.safetensors`` file or ``owner/repo/file``,
            e.g. the improved predictor's ``sac+logos+ava1-l14-linearMSE.pth``.
        decoder: optional ``samples -> images``.
    """

    __name__ = "aesthetic_score"

    def __init__(self, model_path: str, head_path: str, *, decoder: Decoder | None = None):
        super().__init__(model_path, decoder=decoder)
        file = resolve_file(head_path, "head")
        self.head = aesthetic_head(load_state_dict_file(file), source=str(file))
        width = self.model.config.projection_dim
        in_features = next(self.head.parameters()).shape[1]
        if in_features != width:
            raise ConfigError(f"head {file} takes {in_features}-d embeddings but the CLIP model {model_path!r} gives {width}-d")

    def to(self, device: torch.device | str) -> AestheticScore:
        super().to(device)
        self.head.to(device)
        return self

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        del prompts  # the aesthetic score does not read the prompt
        return self.head(self.image_embeddings(samples)).squeeze(-1)


class ImageRewardScore:
    """ImageReward (Xu et al., 2023) per sample: (N, *D), N prompts -> (N,), batched.

    Uses the package's model (``ImageReward.load``) and its batched ``score_gard``; images are
    resized to 224 and CLIP-normalised in torch, prompts tokenised to 35 BLIP tokens as the
    package does. The package is optional: ``pip install image-reward``.

    Args:
        model: "ImageReward-v1.0" (downloaded by the package) or a local ``.pt`` checkpoint.
        med_config: the BLIP ``med_config.json`` (the package downloads it when None).
        decoder: optional ``samples -> images``.
        device: where the model runs (default: CUDA when available).
    """

    __name__ = "image_reward"
    IMAGE_SIZE = 224
    MAX_PROMPT_TOKENS = 35

    def __init__(self, model: str = "ImageReward-v1.0", *, med_config: str | None = None, decoder: Decoder | None = None,
                 device: torch.device | str | None = None):
        try:
            import ImageReward
        except ImportError as err:
            raise ImportError("reward type image_reward needs the ImageReward package: pip install image-reward") from err
        self.device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = ImageReward.load(model, device=self.device, med_config=med_config)
        self.model.eval().requires_grad_(False)
        self.decoder = decoder

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        images = self.decoder(samples) if self.decoder is not None else samples
        pixels = clip_preprocess(images, size=self.IMAGE_SIZE).to(self.device)
        tokens = self.model.blip.tokenizer(list(prompts), padding="max_length", truncation=True,
                                           max_length=self.MAX_PROMPT_TOKENS, return_tensors="pt").to(self.device)
        return self.model.score_gard(tokens.input_ids, tokens.attention_mask, pixels).reshape(-1).float()


class WeightedSum:
    """Σ_k w_k·r_k(samples, prompts) of several image rewards: (N, *D), N prompts -> (N,)."""

    __name__ = "weighted_reward"

    def __init__(self, rewards: Sequence[Callable[[torch.Tensor, Sequence[str]], torch.Tensor]], weights: Sequence[float]):
        if len(rewards) != len(weights) or not rewards:
            raise ConfigError(f"need one weight per reward, got {len(rewards)} rewards and {len(weights)} weights")
        self.rewards = list(rewards)
        self.weights = [float(w) for w in weights]

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return sum(w * r(samples, prompts) for r, w in zip(self.rewards, self.weights))
