"""ADRPOTrainer runs for tests/test_llm_sharded.py: a text case and a Qwen2-Audio case in one process, on one
process or under `accelerate launch` (DeepSpeed ZeRO-3 or FSDP2 on CPU processes).

    python tests/launch_llm_sharded.py TEXT_MODEL_DIR AUDIO_MODEL_DIR OUT_DIR PER_DEVICE_BATCH

Writes OUT_DIR/<case>-rank-<i>.json (the engine each process saw, how its parameters are held, the logged rows,
the completions it generated, how many parameters moved) and OUT_DIR/<case>-rank-<i>.pt (the final parameters,
gathered whole) for every process i and case in ``text``, ``audio``.

The reward is launch_llm_ddp.position_reward, so the advantages and coefficients are those of the one-process run.
For the loss to be comparable too, both runs must also sample the same completions: :func:`row_seeded_generate`
draws each completion with its own seed, a function of the step and of the row's place in the global generation
batch, so that a row sampled on process 1 of 2 gets the draws that row gets on one process. Generation itself
stays the model's ``generate`` inside TRL's ``unwrap_model_for_generation`` (under ZeRO-3 with the parameters
gathered, under FSDP2 with every sharding unit gathered once per generation call by
adrpo.llm.gathered_generation), called once per row; the FSDP2 all-gathers of each generation call are counted.
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from datasets import Dataset
from launch_fsdp_forwards import gathers
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from adrpo.distributed_exit import end_distributed
from adrpo.flow.sharding import whole
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.trainer import ADRPOTrainer
from launch_llm_ddp import PROMPTS, position_reward

RATE = 16000
SEED_STRIDE = 1000  # seeds of the rows of step s: SEED_STRIDE·s + global row index (< SEED_STRIDE rows per step)


def clip(i: int) -> np.ndarray:
    """One second of a 200·(i + 1) Hz tone: equal lengths, so that no prompt is padded."""
    t = np.arange(RATE) / RATE
    return (0.3 * np.sin(2 * np.pi * 200 * (i + 1) * t)).astype(np.float32)


def rows(case: str) -> list[dict]:
    if case == "text":
        return [{"prompt": p} for p in PROMPTS] * 8
    return [{"prompt": [{"role": "user", "content": f"clip {'abcd'[i]}"}], "audio": clip(i)} for i in range(4)] * 8


def row_seeded_generate(model: torch.nn.Module, trainer: ADRPOTrainer) -> None:
    """Make ``model.generate`` (this instance only) sample each row of a batch alone, under the seed
    ``SEED_STRIDE·step + global row``, with the global RNG left as it was; the rows are right-padded to the longest.

    TRL's sampler gives each process a contiguous share of the global generation batch, of equal size, so the global
    row of this process's row i is ``process_index · rows + i``. Every process calls the model's ``generate`` the
    same number of times, as a sharded forward needs (transformers' ``synced_gpus`` keeps each call stepping until
    the row of every process is done)."""
    original = model.generate
    pad = trainer.processing_class.pad_token_id if hasattr(trainer.processing_class, "pad_token_id") else \
        trainer.processing_class.tokenizer.pad_token_id

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        n = input_ids.size(0)
        start = PartialState().process_index * n
        outputs = []
        for i in range(n):
            one = {k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.size(0) == n else v for k, v in kwargs.items()}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED_STRIDE * trainer.state.global_step + start + i)
                outputs.append(original(input_ids=input_ids[i : i + 1], **one))
        width = max(o.size(1) for o in outputs)
        return torch.cat([F.pad(o, (0, width - o.size(1)), value=pad) for o in outputs])

    model.generate = types.MethodType(generate, model)


def whole_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole, on every process (a collective under ZeRO-3 and FSDP2)."""
    params = dict(model.named_parameters())
    if any(hasattr(p, "ds_tensor") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}
    return {n: whole(p.detach()).clone() for n, p in params.items()}


def count_generation_gathers(trainer: ADRPOTrainer, into: list[int]) -> None:
    """Append to ``into`` the FSDP2 all-gathers of each of ``trainer``'s generation calls (0 under other engines)."""
    generate = trainer._generate_single_turn

    def counted(*args, **kwargs):
        result = []
        into.append(gathers(lambda: result.append(generate(*args, **kwargs))))
        return result[0]

    trainer._generate_single_turn = counted


def fsdp_parameter_groups(model: torch.nn.Module) -> int:
    """The FSDP2 parameter groups of ``model``, each gathered by one all-gather (a unit of several modules, as
    accelerate groups the final norm with the tied embeddings, is one; a root whose weights all sit in its units
    has none)."""
    states = {id(part._get_fsdp_state()): part._get_fsdp_state() for part in model.modules() if isinstance(part, FSDPModule)}
    return sum(len(state._fsdp_param_groups) for state in states.values())


def held(model: torch.nn.Module) -> dict[str, int]:
    """How this process holds ``model``'s parameters: ``zero3`` partitioned by ZeRO-3 (``ds_tensor`` holds at most
    half of the elements, rounded up), ``dtensor`` sharded by FSDP2 (a DTensor whose local shard is smaller than the
    whole), out of ``total``."""
    params = list(model.parameters())
    zero3 = sum(hasattr(p, "ds_tensor") and p.ds_tensor.numel() <= (p.ds_numel + 1) // 2 for p in params)
    dtensor = sum(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in params)
    return {"zero3": zero3, "dtensor": dtensor, "total": len(params)}


def train(case: str, model_dir: str, out_dir: str, per_device_batch: int) -> None:
    generated: list[str] = []

    def reward(prompts, completions, trainer_state, **kwargs):
        generated.extend(c if isinstance(c, str) else c[0]["content"] for c in completions)
        return position_reward(completions, trainer_state)

    reward.__name__ = "position_reward"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ADRPOConfig(
            output_dir=str(Path(out_dir) / case), bf16=False, gradient_checkpointing=False, use_cpu=True,
            report_to="none", save_strategy="no", disable_tqdm=True, seed=0, max_steps=3 if case == "text" else 2,
            logging_steps=1, learning_rate=1e-2, per_device_train_batch_size=per_device_batch,
            gradient_accumulation_steps=2, num_generations=4, max_completion_length=4, adv_coef_scale=0.04,
            adv_clip_max=0.06,
        )
        trainer = ADRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows(case)))
    if case == "audio":
        # Qwen2AudioEncoder freezes its sinusoidal positions in __init__; transformers 5.24's from_pretrained makes
        # them trainable again, except under ZeRO-3's zero.Init (measured): frozen here, every engine trains the same
        trainer.model.model.audio_tower.embed_positions.requires_grad_(False)
    row_seeded_generate(trainer.model, trainer)
    generation_gathers: list[int] = []
    count_generation_gathers(trainer, generation_gathers)
    before = whole_weights(trainer.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    after = whole_weights(trainer.model)
    accelerator = trainer.accelerator
    rank = accelerator.process_index
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(after, out / f"{case}-rank-{rank}.pt")
    ref = getattr(trainer.ref_model, "module", trainer.ref_model)  # DeepSpeed's engine holds the module
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    (out / f"{case}-rank-{rank}.json").write_text(json.dumps({
        "distributed_type": str(accelerator.distributed_type), "num_processes": accelerator.num_processes,
        "world_size": world, "deepspeed": trainer.is_deepspeed_enabled, "fsdp": trainer.is_fsdp_enabled,
        "policy": held(trainer.model), "reference": held(ref),
        "changed": sum(not torch.equal(before[n], after[n]) for n in before),
        "trainable": sum(p.requires_grad for p in trainer.model.parameters()),
        "completions": generated,
        "fsdp_groups": fsdp_parameter_groups(trainer.model),
        "generation_gathers": generation_gathers,
        "logs": [row for row in trainer.state.log_history if "adrpo/coef_mean" in row],
    }))


if __name__ == "__main__":
    text_dir, audio_dir, out_dir, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    train("text", text_dir, out_dir, batch)
    train("audio", audio_dir, out_dir, batch)
    end_distributed()  # the trainers' cycles freed before Python's exit (see adrpo.distributed_exit)
