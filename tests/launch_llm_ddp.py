"""A few ADRPOTrainer steps for tests/test_llm_ddp.py, on one process or under `accelerate launch`.

    python tests/launch_llm_ddp.py MODEL_DIR OUT_DIR PER_DEVICE_BATCH

Writes OUT_DIR/rank-<i>.json (the log history, the process count, how many parameters moved) and
OUT_DIR/rank-<i>.pt (the final parameters) for every process i.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset

from adrpo.distributed_exit import end_distributed
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.trainer import ADRPOTrainer

PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2="]


def position_reward(completions, trainer_state, **kwargs):
    """A reward of the sample's place in the global generation batch and the step, not of its text.

    TRL gathers the rewards of every process in process order before it forms the groups, so with
    this reward the advantages, and hence the coefficients, are the same on any number of processes
    although the sampled completions are not.
    """
    start = PartialState().process_index * len(completions)  # every process scores an equal share
    step = trainer_state.global_step
    return [float((7 * (start + i) + 5 * step) % 11) for i in range(len(completions))]


def train(model_dir: str, out_dir: str, per_device_batch: int) -> None:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ADRPOConfig(
            output_dir=str(Path(out_dir) / "trainer"), bf16=False, gradient_checkpointing=False, use_cpu=True,
            report_to="none", save_strategy="no", disable_tqdm=True, seed=0, max_steps=3, logging_steps=1,
            learning_rate=1e-2, per_device_train_batch_size=per_device_batch, gradient_accumulation_steps=2,
            num_generations=4, max_completion_length=4, adv_coef_scale=0.04, adv_clip_max=0.06,
        )
        dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS] * 8)
        trainer = ADRPOTrainer(model=model_dir, reward_funcs=position_reward, args=args, train_dataset=dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    rank = trainer.accelerator.process_index
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(after, out / f"rank-{rank}.pt")
    (out / f"rank-{rank}.json").write_text(json.dumps({
        "num_processes": trainer.accelerator.num_processes,
        "changed": sum(not torch.equal(before[n], after[n]) for n in before),
        "parameters": len(before),
        "logs": [row for row in trainer.state.log_history if "adrpo/coef_mean" in row],
    }))


if __name__ == "__main__":
    train(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    end_distributed()  # the trainer's cycles freed before Python's exit (see adrpo.distributed_exit)
