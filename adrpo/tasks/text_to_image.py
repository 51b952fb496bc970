"""Text-to-image fine-tuning of a diffusers SD3 pipeline with a CLIP-family reward.

The task loads ``StableDiffusion3Pipeline`` (a hub id or a folder; T5 may be absent), wraps
its transformer with :class:`adrpo.flow.models.sd3.SD3Velocity`, scores VAE-decoded samples
with :class:`adrpo.rewards.image.ClipScore` (the paper's reward; PickScore with
``type: pick_score``), and measures ClipDiversity: the mean pairwise Euclidean distance of
unit-norm CLIP image embeddings among the samples of one prompt (range [0, 2]), averaged over
prompts. Evaluations also write an image grid per call (rows = prompts, columns = samples) to
``<output_dir>/eval_grids/`` and to TensorBoard when it is a tracker.

``build_tiny_sd3(folder)`` writes a tiny random pipeline and CLIP model for CPU tests and the
``sd3-tiny`` preset (no hub: tokenizers are built from a character vocabulary).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from adrpo.flow.models.sd3 import LatentDecoder, SD3Velocity, pipeline_encoder
from adrpo.tasks.evaluation import evaluate_flow_policy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REWARD_TYPES = ("clip_score", "pick_score")


def read_prompts(prompts: Sequence[str] | str, field: str) -> list[str]:
    """A list of prompts, or a text file with one prompt per line (relative paths from the cwd)."""
    if isinstance(prompts, str):
        path = Path(prompts)
        if not path.exists():
            raise ValueError(f"{field}: no prompt file at {path}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"{field} must be a non-empty list of prompts or a prompt file")
    return list(prompts)


def load_sd3_pipeline(path: str, dtype: torch.dtype):
    """StableDiffusion3Pipeline from a hub id or folder; components saved as null stay None."""
    from diffusers import StableDiffusion3Pipeline

    absent = {}
    index = Path(path) / "model_index.json"
    if index.exists():
        entries = json.loads(index.read_text())
        if entries.get("_class_name") != "StableDiffusion3Pipeline":
            raise ValueError(
                f"pipeline {path!r} is a {entries.get('_class_name')!r}; the text_to_image task supports "
                "StableDiffusion3Pipeline (FLUX is not supported yet)"
            )
        absent = {name: None for name, value in entries.items() if value == [None, None]}
    pipeline = StableDiffusion3Pipeline.from_pretrained(path, torch_dtype=dtype, **absent)
    return pipeline.to("cuda" if torch.cuda.is_available() else "cpu")


class TextToImageTask:
    """Args come from a YAML ``task_args`` mapping; see ``adrpo/configs/sd3*.yaml``.

    Args:
        pipeline: diffusers SD3 pipeline (hub id or folder).
        reward: ``{type: clip_score | pick_score, model: CLIP folder or hub id}``, or a list of
            such entries each with a ``weight`` (their weighted sum; ClipDiversity uses the first).
        prompts: training prompts (list or file); eval_prompts: held-out ones (default: prompts).
        resolution: image side in pixels; dtype: weights of the frozen parts and the transformer.
        max_sequence_length: T5 tokens of the prompt encoding.
        eval_samples: samples per eval prompt (G_eval); eval_sampling_steps: Euler steps there.
    """

    name = "text_to_image"

    def __init__(self, pipeline: str, reward: dict | list[dict], prompts: Sequence[str] | str, *, eval_prompts: Sequence[str] | str | None = None,
                 resolution: int = 512, dtype: str = "float32", max_sequence_length: int = 256, eval_samples: int = 4,
                 eval_sampling_steps: int = 40, eval_seed: int = 1234):
        from adrpo.rewards.image import ClipScore, WeightedSum

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        entries = reward if isinstance(reward, list) else [reward]
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("type") not in REWARD_TYPES or "model" not in entry:
                raise ValueError(f"reward must be {{type: one of {list(REWARD_TYPES)}, model: PATH}} or a list of them, got {entry!r}")
        self.pipeline = load_sd3_pipeline(pipeline, DTYPES[dtype])
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.decoder = LatentDecoder(self.pipeline.vae)
        scorers = [ClipScore(e["model"], decoder=self.decoder, scale="clip" if e["type"] == "clip_score" else "logit") for e in entries]
        for scorer in scorers:
            scorer.model.to(self.pipeline.device)
        self.clip = scorers[0]
        self.reward = scorers[0] if len(scorers) == 1 else WeightedSum(scorers, [e.get("weight", 1.0) for e in entries])
        self.train_prompts = read_prompts(prompts, "prompts")
        held_out = read_prompts(eval_prompts, "eval_prompts") if eval_prompts is not None else self.train_prompts
        self.eval_group = eval_samples
        self.eval_prompts = [p for p in held_out for _ in range(eval_samples)]  # prompt-major
        self.eval_sampling_steps = eval_sampling_steps
        self._taken = False
        latent_shape = (self.pipeline.transformer.config.in_channels, resolution // self.pipeline.vae_scale_factor, resolution // self.pipeline.vae_scale_factor)
        generator = torch.Generator().manual_seed(eval_seed)
        n = len(self.eval_prompts)
        self.eval_x0 = torch.randn((n, *latent_shape), generator=generator)
        self.eval_noise = torch.randn((n, *latent_shape), generator=generator)
        self.eval_t = torch.rand(n, generator=generator)

    def base_model(self) -> SD3Velocity:
        """The pipeline's transformer as the policy (no copy: call once per task)."""
        if self._taken:
            raise RuntimeError("base_model() hands over the pipeline's transformer and can be called once per task")
        self._taken = True
        encode = pipeline_encoder(self.pipeline, max_sequence_length=self.max_sequence_length)
        return SD3Velocity(self.pipeline.transformer, encode, resolution=self.resolution, vae_scale=self.pipeline.vae_scale_factor)

    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        """ClipDiversity embedding: (N, C, h, w) latents -> (N, E) unit-norm CLIP image embeddings."""
        return self.clip.image_embeddings(samples)

    def evaluate(self, trainer) -> dict[str, float]:
        metrics, samples = evaluate_flow_policy(
            trainer, self.eval_prompts, x0=self.eval_x0, noise=self.eval_noise, t=self.eval_t,
            reward=self.reward, embed=self.embed, group=self.eval_group, num_steps=self.eval_sampling_steps,
        )
        self._write_grid(trainer, samples)
        return metrics

    def _write_grid(self, trainer, samples: torch.Tensor) -> None:
        from PIL import Image

        images = self.decoder(samples)  # (N, 3, H, W) in [0, 1]
        n, _, h, w = images.shape
        grid = images.view(n // self.eval_group, self.eval_group, 3, h, w).permute(0, 3, 1, 4, 2).reshape(n // self.eval_group * h, self.eval_group * w, 3)
        pixels = (grid * 255).round().byte().cpu().numpy()
        if trainer.accelerator.is_main_process:
            folder = trainer.output_dir / "eval_grids"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"step-{trainer.state.step:08d}.png")
            for tracker in trainer.accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("eval/samples", pixels, trainer.state.step, dataformats="HWC")


def build_tiny_sd3(folder: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny random SD3 pipeline (no T5) and a tiny CLIP model; returns their folders."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    vocab_dir = folder / "vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits)
    vocab = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    (vocab_dir / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=16)
    text = dict(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                projection_dim=8, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    encoders = [CLIPTextModelWithProjection(CLIPTextConfig(**text)) for _ in range(2)]
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipeline_dir, clip_dir = folder / "sd3", folder / "clip"
    pipeline.save_pretrained(pipeline_dir)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                                     num_attention_heads=2, image_size=16, patch_size=8, projection_dim=8),
                                projection_dim=8))
    clip.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    return pipeline_dir, clip_dir
