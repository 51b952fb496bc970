"""ADRPOTrainer vs stock TRL GRPOTrainer: training-step time on the same tiny model and data.

Both trainers are built from one saved tiny Qwen2 (character tokenizer, offline) with the
same GRPOConfig fields and β = β0 = 0.04, so both compute the reference log-probabilities
and the KL; ADRPO only adds the per-sample coefficient. Blocks of ``--steps`` optimizer steps
alternate between the two trainers (ABBA order) for ``--rounds`` rounds; a callback records
each step's wall time (generation, scoring, loss, backward, optimizer), the first ``--warmup``
steps of every block are dropped, and the medians are compared.

    .venv/bin/python benchmarks/grpo_step_time.py            # ~1 minute on one CPU thread
"""

from __future__ import annotations

import os
import tempfile
import warnings

import torch
from _common import git_commit, machine
from _trl import StepTimer, print_step_medians, train_in_palindromic_blocks, trl_step_parser
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.trainer import ADRPOTrainer


def digit_count_reward(completions, **kwargs):
    return [float(c.count("7")) for c in completions]


def main() -> None:
    opts = trl_step_parser(__doc__, rounds=6).parse_args()
    torch.set_num_threads(opts.threads)
    warnings.simplefilter("ignore")

    workdir = tempfile.mkdtemp(prefix="adrpo-bench-")
    tokenizer = char_tokenizer(list("0123456789+="))
    path = save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer), hidden=64, seed=opts.seed), tokenizer, os.path.join(workdir, "tiny"))
    dataset = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(10) for b in range(10)])
    common = dict(per_device_train_batch_size=16, num_generations=8, max_completion_length=6, max_steps=opts.steps,
                  learning_rate=1e-4, beta=0.04, bf16=False, gradient_checkpointing=False, use_cpu=True,
                  report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=opts.seed)
    timers = {"adrpo": StepTimer(), "grpo": StepTimer()}

    def build(name: str):
        config_cls, trainer_cls = (ADRPOConfig, ADRPOTrainer) if name == "adrpo" else (GRPOConfig, GRPOTrainer)
        args = config_cls(output_dir=os.path.join(workdir, name), **common)
        trainer = trainer_cls(model=str(path), reward_funcs=digit_count_reward, args=args, train_dataset=dataset, callbacks=[timers[name]])
        trainer.remove_callback(PrinterCallback)
        return trainer

    trainers = {name: build(name) for name in timers}
    samples = train_in_palindromic_blocks(trainers, timers, rounds=opts.rounds, warmup=opts.warmup)
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    print(f"settings: tiny qwen2 hidden=64, batch 16 completions (G=8), 6 tokens, beta=0.04, rounds={opts.rounds} "
          f"steps/block={opts.steps} warmup={opts.warmup} (ABBA), seed={opts.seed}")
    medians = print_step_medians(samples)
    print(f"ratio adrpo/grpo step time: {medians['adrpo'] / medians['grpo']:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
