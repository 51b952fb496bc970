"""Text-to-image fine-tuning of a diffusers SD3 or FLUX.1 pipeline against an image reward.

The task loads the pipeline (a hub id or a folder; SD3's T5 may be absent) and wraps its
transformer as a velocity model (:class:`adrpo.flow.models.sd3.SD3Velocity` or
:class:`adrpo.flow.models.flux.FluxVelocity`, chosen by the pipeline's class). Samples are
VAE latents, decoded only for the rewards. Rewards (``reward``: one entry or a weighted list):

    {type: clip_score, model: CLIP}                 the paper's reward, 100·cos(image, text)
    {type: pick_score, model: PickScore, tokenizer: CLIP-H}
    {type: aesthetic, model: CLIP-L/14, head: FILE} the LAION aesthetic predictor
    {type: image_reward, model: ImageReward-v1.0}   needs `pip install image-reward`
    {type: digits, temperature: 4.0}                the digits miniature's classifier reward

ClipDiversity: the mean pairwise Euclidean distance of unit-norm CLIP image embeddings among
the samples of one prompt (range [0, 2]), averaged over prompts; the CLIP model is
``diversity_model`` or else the first CLIP-based reward's. Evaluations also write an image
grid per call (rows = prompts, columns = samples) to ``<output_dir>/eval_grids/`` and to the
TensorBoard and wandb trackers.

``build_tiny_sd3(folder)`` and ``build_tiny_flux(folder)`` write tiny random pipelines and a
tiny CLIP model for CPU tests and the ``sd3-tiny`` / ``flux-tiny`` presets (no hub:
tokenizers are built from a character vocabulary).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from adrpo.errors import ConfigError
from adrpo.flow.models.diffusers_common import CachedPromptVelocity, LatentDecoder
from adrpo.flow.sharding import whole_state_dict, zero3
from adrpo.tasks.evaluation import check_eval_samples, evaluate_flow_policy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_SEQUENCE_LENGTH = {"StableDiffusion3Pipeline": 256, "FluxPipeline": 512}
PIPELINES = tuple(MAX_SEQUENCE_LENGTH)  # the supported pipeline classes
# the text encoders each pipeline cannot encode a prompt without (SD3 may lack T5, text_encoder_3)
REQUIRED_ENCODERS = {
    "StableDiffusion3Pipeline": {"text_encoder": "CLIP-L", "text_encoder_2": "CLIP-G"},
    "FluxPipeline": {"text_encoder": "CLIP-L", "text_encoder_2": "T5"},
}
# type: (required keys, optional keys) of a reward entry
REWARD_KEYS = {
    "clip_score": ({"model"}, {"tokenizer"}),
    "pick_score": ({"model"}, {"tokenizer"}),
    "aesthetic": ({"model", "head"}, set()),
    "image_reward": (set(), {"model", "med_config"}),
    "digits": (set(), {"temperature", "settings"}),
}


def read_prompts(prompts: Sequence[str] | str | dict, field: str) -> list[str]:
    """A list of prompts, a text file with one prompt per line (relative paths from the cwd), or
    a dataset spec of :func:`adrpo.prompts.load_prompt_dataset` (e.g. a DrawBench CSV with
    ``prompt_column: Prompts``)."""
    if isinstance(prompts, dict):
        from adrpo.prompts import load_prompt_dataset

        prompts = list(load_prompt_dataset(prompts, field=field)["prompt"])
    elif isinstance(prompts, str):
        path = Path(prompts)
        if not path.exists():
            raise ConfigError(f"{field}: no prompt file at {path}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError(f"{field} must be a non-empty list of prompts, a prompt file or a dataset spec")
    return list(prompts)


def local_device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK under ``accelerate launch`` (each process its own
    GPU, as accelerate assigns them), else cuda:0, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def load_pipeline(path: str, dtype: torch.dtype):
    """An SD3 or FLUX pipeline from a hub id or folder; components saved as null stay None."""
    from diffusers import DiffusionPipeline

    absent = {}
    index = Path(path) / "model_index.json"
    if index.exists():
        entries = json.loads(index.read_text())
        if entries.get("_class_name") not in PIPELINES:
            raise ConfigError(f"pipeline {path!r} is a {entries.get('_class_name')!r}; the text_to_image task supports {list(PIPELINES)}")
        absent = {name: None for name, value in entries.items() if value == [None, None]}
    pipeline = DiffusionPipeline.from_pretrained(path, dtype=dtype, **absent)
    if type(pipeline).__name__ not in PIPELINES:
        raise ConfigError(f"pipeline {path!r} is a {type(pipeline).__name__!r}; the text_to_image task supports {list(PIPELINES)}")
    return pipeline.to(local_device())


def velocity_model(pipeline, *, resolution: int, max_sequence_length: int | None, distilled_guidance: float) -> CachedPromptVelocity:
    """The pipeline's transformer in adrpo's convention, with the pipeline's prompt encoding."""
    kind = type(pipeline).__name__
    for name, role in REQUIRED_ENCODERS[kind].items():
        if getattr(pipeline, name, None) is None:
            raise ConfigError(f"the {kind} has no {name} ({role}); it is needed to encode prompts")
    length = max_sequence_length or MAX_SEQUENCE_LENGTH[kind]
    if kind == "FluxPipeline":
        from adrpo.flow.models.flux import FluxVelocity, flux_prompt_encoder

        return FluxVelocity(pipeline.transformer, flux_prompt_encoder(pipeline, max_sequence_length=length), resolution=resolution,
                            vae_scale=pipeline.vae_scale_factor, distilled_guidance=distilled_guidance, scheduler_config=pipeline.scheduler.config)
    from adrpo.flow.models.sd3 import SD3Velocity, sd3_prompt_encoder

    return SD3Velocity(pipeline.transformer, sd3_prompt_encoder(pipeline, max_sequence_length=length), resolution=resolution,
                       vae_scale=pipeline.vae_scale_factor, scheduler=pipeline.scheduler)


def check_reward_entry(entry, index: int | None) -> None:
    """Refuse a malformed reward entry, naming it, its type and the offending keys."""
    where = "reward" if index is None else f"reward[{index}]"
    if not isinstance(entry, dict) or entry.get("type") not in REWARD_KEYS:
        raise ConfigError(f"{where} must be a mapping with type one of {list(REWARD_KEYS)}, got {entry!r}")
    required, optional = REWARD_KEYS[entry["type"]]
    missing = sorted(required - set(entry))
    unknown = sorted(set(entry) - required - optional - {"type", "weight"})
    if missing:
        raise ConfigError(f"{where} of type {entry['type']!r} needs key(s) {missing}")
    if unknown:
        raise ConfigError(f"{where} of type {entry['type']!r} has unknown key(s) {unknown}; allowed: {sorted(required | optional | {'weight'})}")


def build_image_reward(entry: dict, *, decoder: LatentDecoder, device: torch.device):
    """One reward entry (see the module docstring) as ``(latents, prompts) -> (N,)``."""
    from adrpo.rewards import image

    kind = entry["type"]
    if kind in ("clip_score", "pick_score"):
        scale = "clip" if kind == "clip_score" else "logit"
        return image.ClipScore(entry["model"], tokenizer_path=entry.get("tokenizer"), decoder=decoder, scale=scale).to(device)
    if kind == "aesthetic":
        return image.AestheticScore(entry["model"], entry["head"], decoder=decoder).to(device)
    if kind == "image_reward":
        return image.ImageRewardScore(entry.get("model", "ImageReward-v1.0"), med_config=entry.get("med_config"), decoder=decoder, device=device)
    from adrpo.tasks.digits import DigitsImageReward

    return DigitsImageReward.pretrained(entry.get("settings", {}), temperature=entry.get("temperature", 4.0), decoder=decoder)


class TextToImageTask:
    """Args come from a YAML ``task_args`` mapping; see ``adrpo/configs/sd3*.yaml``, ``flux*.yaml``.

    Args:
        pipeline: diffusers SD3 or FLUX pipeline (hub id or folder).
        reward: one reward entry (see the module docstring) or a list of them, each with a
            ``weight`` (default 1; their weighted sum is the reward).
        prompts: training prompts (list, text file, or dataset spec such as
            ``{path: drawbench.csv, prompt_column: Prompts}``); eval_prompts: held-out ones (default: prompts).
        resolution: image side in pixels; dtype: weights of the frozen parts and the transformer.
        max_sequence_length: T5 tokens of the prompt encoding (default 256 for SD3, 512 for FLUX).
        distilled_guidance: FLUX.1-dev's guidance input (ignored by SD3 and FLUX.1-schnell).
        diversity_model: CLIP model of ClipDiversity (default: the first CLIP-based reward's).
        free_text_encoders: encode every training and eval prompt (and the empty one) when the
            policy is handed over, then drop the text encoders (T5-XXL alone is ~9.5 GB in bf16).
        eval_samples: samples per eval prompt (G_eval); eval_sampling_steps: Euler steps there.
    """

    name = "text_to_image"

    def __init__(self, pipeline: str, reward: dict | list[dict], prompts: Sequence[str] | str | dict, *, eval_prompts: Sequence[str] | str | dict | None = None,
                 resolution: int = 512, dtype: str = "float32", max_sequence_length: int | None = None, distilled_guidance: float = 3.5,
                 diversity_model: str | None = None, free_text_encoders: bool = False, eval_samples: int = 4, eval_sampling_steps: int = 40,
                 eval_seed: int = 1234):
        from adrpo.rewards.image import ClipEmbedder, WeightedSum

        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        check_eval_samples(eval_samples)
        entries = reward if isinstance(reward, list) else [reward]
        for index, entry in enumerate(entries):
            check_reward_entry(entry, index if isinstance(reward, list) else None)
        self.train_prompts = read_prompts(prompts, "prompts")
        held_out = read_prompts(eval_prompts, "eval_prompts") if eval_prompts is not None else self.train_prompts
        self.pipeline = load_pipeline(pipeline, DTYPES[dtype])
        self._model = velocity_model(self.pipeline, resolution=resolution, max_sequence_length=max_sequence_length,
                                     distilled_guidance=distilled_guidance)
        device = self.pipeline.device
        self.decoder = LatentDecoder(self.pipeline.vae)
        scorers = [build_image_reward(e, decoder=self.decoder, device=device) for e in entries]
        weighted = isinstance(reward, list) or "weight" in reward
        self.reward = WeightedSum(scorers, [e.get("weight", 1.0) for e in entries]) if weighted else scorers[0]
        if diversity_model is not None:
            self.clip = ClipEmbedder(diversity_model, decoder=self.decoder).to(device)
        else:
            self.clip = next((s for s in scorers if isinstance(s, ClipEmbedder)), None)
            if self.clip is None:
                raise ConfigError("ClipDiversity needs a CLIP model: no reward is CLIP-based, so set task_args.diversity_model")
        self._taken = False
        self.free_text_encoders = free_text_encoders
        self.eval_group = eval_samples
        self.eval_prompts = [p for p in held_out for _ in range(eval_samples)]  # prompt-major
        self.eval_sampling_steps = eval_sampling_steps
        generator = torch.Generator().manual_seed(eval_seed)
        shape = (len(self.eval_prompts), *self._model.data_shape)
        self.eval_x0 = torch.randn(shape, generator=generator)
        self.eval_noise = torch.randn(shape, generator=generator)
        self.eval_t = torch.rand(len(self.eval_prompts), generator=generator)

    def base_model(self) -> CachedPromptVelocity:
        """The pipeline's transformer as the policy (no copy: call once per task)."""
        if self._taken:
            raise RuntimeError("base_model() hands over the pipeline's transformer and can be called once per task")
        self._taken = True
        if self.free_text_encoders:
            self._encode_all_and_free_encoders()
        return self._model

    def _encode_all_and_free_encoders(self, batch: int = 32) -> None:
        prompts = sorted({"", *self.train_prompts, *self.eval_prompts})
        for start in range(0, len(prompts), batch):
            self._model.encode_prompts(prompts[start:start + batch])
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if hasattr(self.pipeline, name):
                setattr(self.pipeline, name, None)

        def refuse(missing: list[str]):
            raise ConfigError(f"prompt {missing[0]!r} was not encoded before the text encoders were freed (free_text_encoders)")

        self._model.encode = refuse

    def export(self, trainer, folder: str | Path | None = None) -> Path:
        """Write the fine-tuned transformer where diffusers reads it (gathered on every process under FSDP2
        and ZeRO-3, written by the main one; atomic):
        in LoRA mode ``pytorch_lora_weights.safetensors`` for ``pipeline.load_lora_weights(folder)``,
        else the whole transformer (``from_pretrained``). ``folder`` defaults to
        ``<output_dir>/lora`` or ``<output_dir>/transformer``. Returns it."""
        from huggingface_hub import save_torch_state_dict

        from adrpo.flow.checkpointing import write_dir_atomically
        from adrpo.flow.lora import adapter_state_dict

        lora = trainer.reference is None
        folder = Path(folder) if folder is not None else trainer.output_dir / ("lora" if lora else "transformer")
        transformer, main = trainer.policy.transformer, trainer.accelerator.is_main_process
        sharded = trainer.accelerator.is_fsdp2 or zero3(trainer.accelerator)
        # gathered on every process (a collective under FSDP2 and ZeRO-3), held whole on the main one
        layers = adapter_state_dict(trainer.policy, prefix="transformer") if lora else None
        weights = whole_state_dict(transformer, keep=main) if sharded and not lora else None

        def write(tmp: Path) -> None:
            if lora:
                metadata = trainer.policy.peft_config["default"].to_dict()
                type(self.pipeline).save_lora_weights(tmp, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata)
            elif weights is not None:  # what save_pretrained writes, from the gathered tensors
                transformer.save_config(tmp)
                save_torch_state_dict(weights, tmp, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                                      max_shard_size="10GB", metadata={"format": "pt"})
            else:
                transformer.save_pretrained(tmp)

        if main:
            write_dir_atomically(folder, write)
        trainer.accelerator.wait_for_everyone()
        return folder

    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        """ClipDiversity embedding: (N, C, h, w) latents -> (N, E) unit-norm CLIP image embeddings."""
        return self.clip.image_embeddings(samples)

    @torch.no_grad()
    def images(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples as images: (N, C, h, w) latents -> (N, 3, H, W) in [0, 1], the VAE decode
        the evaluation's rewards and grids use."""
        return self.decoder(samples).float().clamp(0, 1)

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
                    tracker.log_images({"eval/samples": pixels[None]}, trainer.state.step, dataformats="NHWC")
                elif tracker.name == "wandb":
                    tracker.log_images({"eval/samples": [pixels]}, trainer.state.step)




CHARS = list(string.ascii_lowercase + string.digits)
TINY_TEXT = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                 bos_token_id=0, eos_token_id=1, pad_token_id=1)


def tiny_clip_tokenizer(folder: Path):
    """A CLIP tokenizer over lowercase letters and digits, one token per character."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<|startoftext|>", "<|endoftext|>", *CHARS, *(c + "</w>" for c in CHARS)]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def tiny_vae(latent_channels: int, **scaling):
    """A one-block AutoencoderKL that does not downsample (vae_scale_factor 1)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         block_out_channels=(8,), layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4, sample_size=8, **scaling)


def save_tiny_clip(folder: Path, tokenizer) -> Path:
    """A tiny random CLIPModel (16-px images) with its tokenizer, the reward of the tiny presets."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=len(tokenizer), projection_dim=8, **TINY_TEXT)
    vision = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8, projection_dim=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_sd3(folder: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny random SD3 pipeline (no T5) and a tiny CLIP model; returns their folders."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = Path(folder)
    tokenizer = tiny_clip_tokenizer(folder / "vocab")
    torch.manual_seed(seed)
    encoders = [CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer), projection_dim=8, **TINY_TEXT)) for _ in range(2)]
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(4),
        text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipeline.save_pretrained(folder / "sd3")
    return folder / "sd3", save_tiny_clip(folder / "clip", tokenizer)


def build_tiny_flux(folder: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny random guidance-distilled FLUX pipeline (CLIP + T5 encoders, dynamic time
    shift as FLUX.1-dev) and a tiny CLIP model; returns their folders."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5Tokenizer

    folder = Path(folder)
    tokenizer = tiny_clip_tokenizer(folder / "vocab")
    t5_tokenizer = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0), *((c, -1.0) for c in CHARS)], extra_ids=0)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    )
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
        vae=tiny_vae(4, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TINY_TEXT)), tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)),
        tokenizer_2=t5_tokenizer, transformer=transformer,
    )
    pipeline.save_pretrained(folder / "flux")
    return folder / "flux", save_tiny_clip(folder / "clip", tokenizer)
