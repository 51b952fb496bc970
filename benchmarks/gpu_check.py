"""First check on a CUDA device (`make gpu-check`): step time and peak memory of the real-size models, no hub.

Three sections, each on randomly initialised weights built from the architecture's published config
(``_gpu_shapes.py`` has the shapes) and random text embeddings of the real shapes, in bfloat16 weights
with float32 LoRA adapters (the project's diffusers adapters and TRL's ``bf16=True``):

1. **SD3-medium, ADRPO-FM vs ORW-CFM-W2**: one ``FlowTrainer`` (LoRA rank 32) whose method is switched per
   block, as in ``fm_step_time.py``, in ABBA blocks. Each step is timed, and inside it (the wrappers of
   ``trainer_efficiency.timed_inside``) its sampling (``_sample``), policy update (``_loss_and_backward`` and
   the optimizer's step and zero_grad) and reference forward (``reference_velocity``). Reported per method:
   the median step (``statistics.median_low``, an actual step) with its own three parts, so the parts never
   sum to more than the step; the step-time ratio ADRPO / ORW-CFM-W2.
2. **FLUX.1-dev (12B), one LoRA step with gradient checkpointing**: ADRPO-FM steps of a ``FlowTrainer``
   with ``gradient_checkpointing=True``; step time, its parts, peak memory and whether it fits (an
   out-of-memory error is caught and reported as not fitting).
3. **Qwen2.5-7B, ADRPOTrainer vs TRL's GRPOTrainer**: both with a peft LoRA config (TRL then computes the
   reference with the adapter disabled, so no reference copy), β = β0 = 0.04, in palindromic blocks of
   ``train()`` timed by ``_trl.StepTimer`` as in ``grpo_step_time.py``. The two models share one set of base
   weights (the second is built on the meta device and handed the first's tensors), so nothing is written
   to disk and the 15 GB of weights are held once.

Peak memory is ``torch.cuda.max_memory_allocated`` since the section's weights were built (per trainer's
``train()`` calls in section 3); without CUDA it is not measured (null, with a note), and every section
also reports the bytes it holds in weights and optimizer state, measurable anywhere.

Departures from a real run: the reward is −mean(x1²) on the latents (no VAE decode, no reward model) and,
for the LLM, the share of even token ids of a completion (the offline character tokenizer decodes few of
the 152064 ids); completions are forced to full length (``min_new_tokens``) so both trainers sample the
same number of tokens. Timings therefore leave out reward models and text encoders.

Without CUDA the script prints one line and exits 0; ``--tiny`` runs the same code at tiny shapes on
whatever device there is (float32 and no bf16 on a CPU)::

    .venv/bin/python benchmarks/gpu_check.py                 # one H100/H200-class GPU, a few minutes
    .venv/bin/python benchmarks/gpu_check.py --tiny --out runs/gpu-check-tiny.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from _common import git_commit, machine, timed_calls
from _gpu_shapes import LORA_TARGETS_IMAGE, LORA_TARGETS_LLM, flux_config, flux_run, llm_run, qwen2_config, sd3_config, sd3_run
from _trl import StepTimer, train_in_palindromic_blocks
from accelerate.state import AcceleratorState
from datasets import Dataset
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.utils import logging as diffusers_logging
from peft import LoraConfig
from torch import nn
from trainer_efficiency import timed_inside
from transformers import AutoModelForCausalLM, PrinterCallback, Qwen2Config, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from adrpo.flow.config import FlowConfig
from adrpo.flow.methods import LOSSES
from adrpo.flow.models.flux import FluxVelocity
from adrpo.flow.models.sd3 import SD3Velocity
from adrpo.flow.trainer import FlowTrainer
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import char_tokenizer
from adrpo.llm.trainer import ADRPOTrainer

GIB = 2**30
PARTS = ("sampling", "policy", "reference")  # the order timed_inside fills them in
NO_CUDA = "not measured: no CUDA device (the weights and optimizer state held are reported instead)"


def fresh_section_state() -> None:
    """Start a section as a process of its own would: the last section's models freed (collected, CUDA cache
    emptied) and accelerate's process-wide state forgotten, since the flow trainers' Accelerator (no mixed
    precision) and TRL's (bf16) cannot share it and accelerate refuses to change it once set."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    AcceleratorState._reset_state(reset_partial_state=True)


def built_on(device: torch.device, dtype: torch.dtype, factory) -> nn.Module:
    """``factory()``'s module created directly on ``device`` (random init there), cast to ``dtype``."""
    with torch.device(device):
        module = factory()
    return module.to(device=device, dtype=dtype)  # and any tensor a constructor placed elsewhere


def random_text_encoder(tokens: int, width: int, pooled: int, *, seed: int, device: torch.device, dtype: torch.dtype):
    """A stand-in for a pipeline's text encoders: ``prompts -> ((N, tokens, width), (N, pooled))`` of random
    numbers, what the adapters' ``encode`` argument takes (each prompt is encoded once and cached by them)."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(prompts)
        embeds = torch.randn(n, tokens, width, generator=generator, device=device)
        return embeds.to(dtype), torch.randn(n, pooled, generator=generator, device=device).to(dtype)

    return encode


def latent_reward(samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """−mean(x1²) per sample: (N, C, h, w) -> (N,), a reward that costs nothing next to the model."""
    return -samples.float().pow(2).flatten(1).mean(dim=1)


def even_token_share(completions, completion_ids, **kwargs) -> list[float]:
    """The share of even token ids in each completion (it varies for any vocabulary)."""
    return [sum(1 for i in ids if i % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    """GiB the CUDA allocator held at most since :func:`reset_peak`; None on other devices."""
    return torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None


def held_gib(modules: Sequence[nn.Module], optimizers: Sequence) -> float:
    """GiB of the distinct storages of the modules' parameters and the optimizers' state tensors."""
    tensors = [p for m in modules for p in m.parameters()]
    for optimizer in optimizers:
        state = getattr(optimizer, "optimizer", optimizer).state  # accelerate's wrapper or torch's optimizer
        tensors += [v for per_param in state.values() for v in per_param.values() if torch.is_tensor(v)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values()) / GIB


def flow_trainer(velocity: nn.Module, run: dict, output_dir: str, *, seed: int, gradient_checkpointing: bool) -> FlowTrainer:
    """An ADRPO-FM FlowTrainer with LoRA on the attention projections, no logging or checkpoints."""
    config = FlowConfig(
        method="adrpo", prompts_per_step=run["prompts_per_step"], group_size=run["group_size"],
        sampling_steps=run["sampling_steps"], guidance_scale=run["guidance_scale"], lora_rank=run["lora_rank"],
        lora_alpha=run["lora_rank"], lora_target_modules=LORA_TARGETS_IMAGE, gradient_checkpointing=gradient_checkpointing,
        num_steps=10_000, seed=seed, output_dir=output_dir, report_to=["none"], progress_bar=False, checkpoint_steps=0, monitor="off",
    )
    return FlowTrainer(config, velocity, latent_reward, [f"prompt {i}" for i in range(8)])


def time_flow_steps(trainer: FlowTrainer, methods: Sequence[str], run: dict) -> dict:
    """Per method: the median step (seconds) with its parts, from ``run["rounds"]`` rounds of one block of
    ``run["steps_per_block"]`` steps per method in palindromic order, after ``run["warmup"]`` untimed steps each."""
    configs = {method: dataclasses.replace(trainer.config, method=method) for method in methods}

    def step_as(method: str):
        trainer.config, trainer.loss_fn = configs[method], LOSSES[method]
        return trainer.step

    for method in methods:
        timed_calls(step_as(method), run["warmup"])
    totals: dict[str, list[float]] = {method: [] for method in methods}
    parts = {method: {part: [] for part in PARTS} for method in methods}
    for round_index in range(run["rounds"]):
        for method in methods if round_index % 2 == 0 else methods[::-1]:
            with timed_inside(trainer, parts[method]):
                totals[method] += timed_calls(step_as(method), run["steps_per_block"])
    result = {}
    for method in methods:
        index = totals[method].index(statistics.median_low(totals[method]))
        result[method] = {"step_s": totals[method][index], "steps_timed": len(totals[method]),
                          **{f"{part}_s": parts[method][part][index] for part in PARTS}}
    return result


def measure_sd3(tiny: bool, device: torch.device, dtype: torch.dtype, workdir: str, seed: int) -> dict:
    """Section 1: ADRPO-FM against ORW-CFM-W2 on an SD3-medium-shaped transformer."""
    fresh_section_state()
    shape, run = sd3_config(tiny), sd3_run(tiny)
    torch.manual_seed(seed)
    transformer = built_on(device, dtype, lambda: SD3Transformer2DModel(**shape))
    parameters = sum(p.numel() for p in transformer.parameters())  # before LoRA joins them
    encoder = random_text_encoder(run["text_tokens"], shape["joint_attention_dim"], shape["pooled_projection_dim"], seed=seed, device=device, dtype=dtype)
    reset_peak(device)
    trainer = flow_trainer(SD3Velocity(transformer, encoder, resolution=run["resolution"]), run, f"{workdir}/sd3", seed=seed, gradient_checkpointing=False)
    methods = time_flow_steps(trainer, ("adrpo", "orw_cfm_w2"), run)
    return {
        "shape": shape, "run": run, "dtype": str(dtype), "parameters": parameters,
        "trainable_parameters": sum(p.numel() for p in trainer.trainable.values()), "methods": methods,
        "ratio_adrpo_orw": methods["adrpo"]["step_s"] / methods["orw_cfm_w2"]["step_s"],
        "peak_memory_gib": peak_gib(device), "held_gib": held_gib([trainer.policy], [trainer.optimizer]),
    }


def measure_flux(tiny: bool, device: torch.device, dtype: torch.dtype, workdir: str, seed: int) -> dict:
    """Section 2: ADRPO-FM LoRA steps with gradient checkpointing on a FLUX.1-dev-shaped transformer."""
    fresh_section_state()
    shape, run = flux_config(tiny), flux_run(tiny)
    torch.manual_seed(seed)
    transformer = built_on(device, dtype, lambda: FluxTransformer2DModel(**shape))
    parameters = sum(p.numel() for p in transformer.parameters())  # before LoRA joins them
    encoder = random_text_encoder(run["text_tokens"], shape["joint_attention_dim"], shape["pooled_projection_dim"], seed=seed, device=device, dtype=dtype)
    reset_peak(device)
    trainer = flow_trainer(FluxVelocity(transformer, encoder, resolution=run["resolution"]), run, f"{workdir}/flux", seed=seed, gradient_checkpointing=True)
    result = {
        "shape": {**shape, "axes_dims_rope": list(shape["axes_dims_rope"])}, "run": run, "dtype": str(dtype),
        "parameters": parameters,
        "trainable_parameters": sum(p.numel() for p in trainer.trainable.values()),
        "only_lora_trainable": bool(trainer.trainable) and all("lora_" in name for name in trainer.trainable),
        "gradient_checkpointing": bool(transformer.gradient_checkpointing), "error": None,
        "device_memory_gib": torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else None,
    }
    try:
        result["methods"] = time_flow_steps(trainer, ("adrpo",), run)
    except torch.OutOfMemoryError as err:  # the question this section answers
        result["methods"], result["error"] = None, str(err).splitlines()[0]
    result["peak_memory_gib"] = peak_gib(device)
    result["fits"] = None if device.type != "cuda" else result["error"] is None
    result["held_gib"] = held_gib([trainer.policy], [trainer.optimizer])
    return result


class PeakMemory(TrainerCallback):
    """The CUDA allocator's peak over every ``train()`` call of one trainer, in :attr:`gib` (None without CUDA)."""

    def __init__(self, device: torch.device):
        self.device, self.gib = device, None

    def on_train_begin(self, args, state, control, **kwargs):
        reset_peak(self.device)

    def on_train_end(self, args, state, control, **kwargs):
        peak = peak_gib(self.device)
        self.gib = None if peak is None else max(peak, self.gib or 0.0)


def sharing_weights(source: nn.Module) -> nn.Module:
    """A second model of ``source``'s class and config holding ``source``'s very tensors: built on the meta
    device (no memory, no init), then every parameter and buffer of ``source`` put in its place."""
    with torch.device("meta"):
        model = type(source)(source.config)
    for name, tensor in [*source.named_parameters(remove_duplicate=False), *source.named_buffers(remove_duplicate=False)]:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        (module._parameters if isinstance(tensor, nn.Parameter) else module._buffers)[leaf] = tensor
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors of {type(model).__name__} not shared from the source: {left[:3]}")
    return model


def measure_llm(tiny: bool, device: torch.device, dtype: torch.dtype, workdir: str, seed: int) -> dict:
    """Section 3: ADRPOTrainer against TRL's GRPOTrainer on a Qwen2.5-7B-shaped causal LM with LoRA."""
    fresh_section_state()
    run, shape = llm_run(tiny), qwen2_config(tiny)
    torch.manual_seed(seed)
    with torch.device(device):  # random init on the device, in the dtype from_pretrained(dtype=...) would load
        models = {"adrpo": AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=dtype)}
    parameters = sum(p.numel() for p in models["adrpo"].parameters())
    models["grpo"] = sharing_weights(models["adrpo"])
    tokenizer = char_tokenizer(list("0123456789+="))
    digits = torch.randint(0, 10, (64, run["prompt_tokens"]), generator=torch.Generator().manual_seed(seed))
    dataset = Dataset.from_list([{"prompt": "".join(map(str, row.tolist()))} for row in digits])
    common = dict(
        per_device_train_batch_size=run["batch"], num_generations=run["num_generations"], max_completion_length=run["completion_tokens"],
        generation_kwargs={"min_new_tokens": run["completion_tokens"]}, max_steps=run["steps_per_block"], learning_rate=1e-4,
        beta=run["beta"], bf16=device.type == "cuda", gradient_checkpointing=True, use_cpu=device.type != "cuda",
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=seed,
    )
    lora = LoraConfig(r=run["lora_rank"], lora_alpha=run["lora_rank"], target_modules=LORA_TARGETS_LLM, task_type="CAUSAL_LM")
    timers = {name: StepTimer() for name in models}
    peaks = {name: PeakMemory(device) for name in models}
    reset_peak(device)
    trainers = {}
    for name, model in models.items():
        config_cls, trainer_cls = (ADRPOConfig, ADRPOTrainer) if name == "adrpo" else (GRPOConfig, GRPOTrainer)
        trainers[name] = trainer_cls(model=model, reward_funcs=even_token_share, args=config_cls(output_dir=f"{workdir}/{name}", **common),
                                     train_dataset=dataset, processing_class=tokenizer, peft_config=lora, callbacks=[timers[name], peaks[name]])
        trainers[name].remove_callback(PrinterCallback)
    samples = train_in_palindromic_blocks(trainers, timers, rounds=run["rounds"], warmup=run["warmup"])
    steps = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "shape": shape, "run": run, "dtype": str(dtype), "parameters": parameters,
        "trainable_parameters": {name: sum(p.numel() for p in t.model.parameters() if p.requires_grad) for name, t in trainers.items()},
        "reference": {name: "adapter disabled" if t.ref_model is None else type(t.ref_model).__name__ for name, t in trainers.items()},
        "gradient_checkpointing": {name: bool(t.model.is_activation_checkpointing) for name, t in trainers.items()},
        "step_s": steps, "steps_timed": {name: len(values) for name, values in samples.items()},
        "ratio_adrpo_grpo": steps["adrpo"] / steps["grpo"],
        "peak_memory_gib": {name: peak.gib for name, peak in peaks.items()},
        "held_gib": held_gib([t.model for t in trainers.values()], [t.optimizer for t in trainers.values()]),
    }


def size(gib: float | None) -> str:
    """GiB as GiB, or MiB below one; None as not measured."""
    if gib is None:
        return "n/a (no CUDA)"
    return f"{gib:.2f} GiB" if gib >= 1 else f"{gib * 1024:.3g} MiB"


def count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.3g} M"


def step_cell(m: dict) -> str:
    """A timed method's median step and its parts."""
    return (f"{m['step_s']:.4g} s ({m['sampling_s']:.4g} / {m['policy_s']:.4g} / {m['reference_s']:.4g} s), "
            f"n = {m['steps_timed']}")


def flow_shape(section: dict, layers: str) -> str:
    run = section["run"]
    return (f"{layers}, {run['resolution']} px, B·G = {run['prompts_per_step'] * run['group_size']}, {run['sampling_steps']} Euler "
            f"steps, guidance {run['guidance_scale']}, LoRA r {run['lora_rank']}: {count(section['parameters'])} parameters, "
            f"{count(section['trainable_parameters'])} trained")


def rows(sections: dict) -> list[tuple[str, str, str]]:
    """(section, quantity, value) rows of the table."""
    sd3, flux, llm = sections["sd3_fm"], sections["flux_lora"], sections["llm"]
    parts = "step (sampling / policy / reference)"
    out = [("SD3-medium ADRPO-FM", "shape", flow_shape(sd3, f"{sd3['shape']['num_layers']} layers"))]
    out += [("", f"{method} {parts}", step_cell(m)) for method, m in sd3["methods"].items()]
    out += [("", "ratio adrpo / orw_cfm_w2 step time", f"{sd3['ratio_adrpo_orw']:.3f}"),
            ("", "peak memory; held (weights + optimizer)", f"{size(sd3['peak_memory_gib'])}; {size(sd3['held_gib'])}")]
    layers = f"{flux['shape']['num_layers']} + {flux['shape']['num_single_layers']} blocks"
    out.append(("FLUX.1-dev LoRA, checkpointing", "shape", flow_shape(flux, layers)))
    out.append(("", f"adrpo {parts}", f"failed: {flux['error']}" if flux["methods"] is None else step_cell(flux["methods"]["adrpo"])))
    fits = "n/a (no CUDA)" if flux["fits"] is None else f"{'yes' if flux['fits'] else 'NO'} ({size(flux['device_memory_gib'])} on the device)"
    out += [("", "peak memory; held (weights + optimizer)", f"{size(flux['peak_memory_gib'])}; {size(flux['held_gib'])}"),
            ("", "fits in device memory", fits)]
    shape, run = llm["shape"], llm["run"]
    out.append(("Qwen2.5-7B ADRPO vs GRPO", "shape", f"{shape['num_hidden_layers']} layers × {shape['hidden_size']}, {run['batch']} completions "
                f"(G = {run['num_generations']}) of {run['completion_tokens']} tokens, LoRA r {run['lora_rank']}: "
                f"{count(llm['parameters'])} parameters, {count(llm['trainable_parameters']['adrpo'])} trained"))
    out += [("", f"{name} step; peak memory", f"{llm['step_s'][name]:.4g} s, n = {llm['steps_timed'][name]}; {size(llm['peak_memory_gib'][name])}")
            for name in ("adrpo", "grpo")]
    out += [("", "ratio adrpo / grpo step time", f"{llm['ratio_adrpo_grpo']:.3f}"),
            ("", "held (shared weights + both optimizers)", size(llm["held_gib"]))]
    return out


def markdown_table(table_rows: list[tuple[str, str, str]]) -> str:
    lines = ["| section | quantity | value |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in table_rows])


@contextmanager
def quiet() -> Iterator[None]:
    """Python warnings and transformers' and diffusers' notices off inside the block (the output is one table)."""
    levels = transformers.logging.get_verbosity(), diffusers_logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes on whatever device there is (the code path, not the numbers).")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check.json"), help="Where the JSON report is written.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        print("gpu_check: no CUDA device here, nothing measured (--tiny runs the same code at tiny shapes on the CPU)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, quiet():
        sections = {name: measure(args.tiny, device, dtype, workdir, args.seed)
                    for name, measure in (("sd3_fm", measure_sd3), ("flux_lora", measure_flux), ("llm", measure_llm))}
    report = {
        "machine": machine(), "commit": git_commit(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "tiny": args.tiny, "seed": args.seed,
        "peak_memory_note": None if device.type == "cuda" else NO_CUDA, "total_s": time.perf_counter() - start, "sections": sections,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['machine']}")
    print(f"torch {report['torch']} | CUDA {report['cuda']} | commit: {report['commit']} | {'tiny shapes' if args.tiny else 'full shapes'}, "
          f"{report['total_s']:.0f} s | JSON: {args.out}")
    print(markdown_table(rows(sections)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
