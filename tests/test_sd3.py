"""SD3 through diffusers on tiny random models: conventions, conditioning, LoRA reference,
CLIP rewards and the `fm train` path (train, resume) on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from adrpo import cli
from adrpo.core.flow_losses import cfm_loss
from adrpo.core.paths import StraightPath
from adrpo.flow.config import FlowConfig
from adrpo.flow.models.diffusers_common import pack_condition, unpack_condition
from adrpo.flow.models.sd3 import SD3Velocity
from adrpo.flow.trainer import FlowTrainer
from adrpo.rewards.image import ClipScore, clip_preprocess
from adrpo.tasks import build_task
from conftest import IMAGE_LORA as LORA
from conftest import IMAGE_PROMPTS as PROMPTS
from conftest import tiny_image_task as make_task
from conftest import tiny_image_train_config


class AnalyticTransformer(torch.nn.Module):
    """Predicts diffusers' target (noise − data) exactly when all data equal one point x1*."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target
        self.config = type("Config", (), {"patch_size": 2, "in_channels": target.shape[0], "pooled_projection_dim": 2})()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, return_dict):
        sigma = (timestep / 1000).view(-1, 1, 1, 1)
        return ((hidden_states - self.target) / sigma,)


def test_analytic_velocity_of_a_known_path_gives_zero_loss():
    # x_t = (1 − t)·x0 + t·x1*, so u_t = x1* − x0 = (x1* − x_t)/(1 − t) and diffusers predicts −u_t
    target = torch.randn(4, 4, 4)
    model = SD3Velocity(AnalyticTransformer(target), lambda prompts: (torch.zeros(len(prompts), 3, 4), torch.zeros(len(prompts), 2)), resolution=32)
    x0 = torch.randn(5, 4, 4, 4)
    t = torch.rand(5) * 0.9 + 0.05
    x1 = target.expand(5, -1, -1, -1)
    x_t, u_t = StraightPath().sample(x0, x1, t)
    loss = cfm_loss(model(x_t, t, model.encode_prompts(["p"] * 5)), u_t).per_sample
    torch.testing.assert_close(loss, torch.zeros(5), atol=1e-9, rtol=0)


def test_sampler_reproduces_the_sd3_pipeline_with_guidance(tiny_sd3):
    import numpy as np

    from adrpo.core.paths import shifted_time_grid
    from adrpo.flow.sampler import sample_euler

    task = make_task(tiny_sd3)
    model = task.base_model()
    x0 = torch.randn(2, *model.data_shape, generator=torch.Generator().manual_seed(0))
    cond = model.encode_prompts(PROMPTS)
    common = dict(prompt=PROMPTS, height=8, width=8, num_inference_steps=4, guidance_scale=4.5, latents=x0, output_type="latent", max_sequence_length=8)
    # the model's own grid is the scheduler's: the pipeline's default call
    ours = sample_euler(model, cond, x0, num_steps=4, guidance_scale=4.5, grid=model.time_grid(4))
    torch.testing.assert_close(ours, task.pipeline(**common).images, atol=1e-5, rtol=1e-5)
    # a fixed shift of 3 is the scheduler's shift applied to linspace(1, 1/N, N) (+ the final 0)
    shifted = sample_euler(model, cond, x0, num_steps=4, guidance_scale=4.5, grid=shifted_time_grid(4, shift=3.0))
    torch.testing.assert_close(shifted, task.pipeline(**common, sigmas=np.linspace(1.0, 0.25, 4)).images, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, shifted)  # the two grids differ
    with pytest.raises(ValueError, match=r"grid must hold num_steps \+ 1 = 5 times, got shape \(4,\)"):
        sample_euler(model, cond, x0, num_steps=4, grid=torch.linspace(0, 1, 4))


def test_condition_packing_round_trips_and_refuses_oversized_pooled():
    embeds, pooled = torch.randn(3, 5, 8), torch.randn(3, 6)
    packed = pack_condition(embeds, pooled)
    assert packed.shape == (3, 6, 8)
    back_embeds, back_pooled = unpack_condition(packed, 6)
    assert torch.equal(back_embeds, embeds) and torch.equal(back_pooled, pooled)
    with pytest.raises(ValueError, match="pooled dim 9 exceeds the embedding dim 8"):
        pack_condition(embeds, torch.randn(3, 9))


def test_prompts_are_encoded_once_and_a_bad_encoder_is_named():
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return torch.randn(len(prompts), 3, 4), torch.randn(len(prompts), 2)

    model = SD3Velocity(AnalyticTransformer(torch.zeros(4, 4, 4)), encode, resolution=32)
    first = model.encode_prompts(["b", "a", "b"])
    again = model.encode_prompts(["a", "b"])
    assert calls == [["a", "b"]] and first.shape == (3, 4, 4)
    assert torch.equal(first[1], again[0]) and torch.equal(first[0], first[2])
    broken = SD3Velocity(AnalyticTransformer(torch.zeros(4, 4, 4)), lambda p: (torch.randn(1, 3, 4), torch.randn(1, 2)), resolution=32)
    with pytest.raises(ValueError, match="returned 1 rows for 2 prompts"):
        broken.encode_prompts(["x", "y"])
    with pytest.raises(ValueError, match="resolution 30 must be a multiple of 16"):
        SD3Velocity(AnalyticTransformer(torch.zeros(4, 4, 4)), encode, resolution=30)


def test_lora_reference_is_the_base_and_only_adapters_train(tiny_sd3, tmp_path):
    task = make_task(tiny_sd3)
    base = task.pipeline.transformer
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    config = FlowConfig(num_steps=2, prompts_per_step=2, group_size=2, sampling_steps=2, time_shift=3.0, learning_rate=1e-2,
                        output_dir=str(tmp_path), report_to=["none"], progress_bar=False, **LORA)
    trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts)
    assert trainer.reference is None and all("lora_" in name for name in trainer.trainable)
    x_t, t = torch.randn(4, 4, 8, 8), torch.rand(4)
    cond = trainer.policy.encode_prompts(PROMPTS * 2)
    assert torch.equal(trainer.policy(x_t, t, cond), trainer.reference_velocity(x_t, t, cond))  # zero-initialised B
    lora_before = {n: p.detach().clone() for n, p in trainer.trainable.items()}
    trainer.train()
    assert any(not torch.equal(lora_before[n], p) for n, p in trainer.trainable.items())
    for name, param in trainer.policy.named_parameters():
        key = name.split("transformer.", 1)[-1].replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(param, frozen[key]), name
    assert not torch.equal(trainer.policy(x_t, t, cond), trainer.reference_velocity(x_t, t, cond))


def test_clip_score_values_and_wrong_image_shape(tiny_sd3):
    reward = ClipScore(str(tiny_sd3[1]))
    images = torch.rand(3, 3, 8, 8)
    scores = reward(images, ["a red cat"] * 3)
    direct = 100 * (reward.image_embeddings(images) * reward.text_embeddings(["a red cat"] * 3)).sum(-1)
    torch.testing.assert_close(scores, direct)
    assert scores.shape == (3,) and bool((scores.abs() <= 100 + 1e-4).all())
    torch.testing.assert_close(reward.image_embeddings(images).norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match=r"images of shape \(N, 3, H, W\).*\(3, 1, 8, 8\)"):
        reward(torch.rand(3, 1, 8, 8), ["a"] * 3)
    assert clip_preprocess(images, size=16).shape == (3, 3, 16, 16)


def test_task_refuses_bad_arguments_by_name(tiny_sd3):
    pipeline_dir, clip_dir = tiny_sd3
    with pytest.raises(ValueError, match=r"reward must be a mapping with type one of \['clip_score'"):
        build_task("text_to_image", dict(pipeline=str(pipeline_dir), reward={"type": "clip"}, prompts=PROMPTS), seed=0)
    with pytest.raises(ValueError, match=r"reward\[1\] of type 'aesthetic' needs key\(s\) \['head'\]"):
        build_task("text_to_image", dict(pipeline=str(pipeline_dir), prompts=PROMPTS,
                                         reward=[{"type": "clip_score", "model": str(clip_dir)}, {"type": "aesthetic", "model": str(clip_dir)}]), seed=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['modle'\]"):
        build_task("text_to_image", dict(pipeline=str(pipeline_dir), reward={"type": "clip_score", "modle": "x", "model": "y"}, prompts=PROMPTS), seed=0)
    with pytest.raises(ValueError, match="prompts: no prompt file at"):
        build_task("text_to_image", dict(pipeline=str(pipeline_dir), reward={"type": "clip_score", "model": str(clip_dir)}, prompts="missing.txt"), seed=0)
    with pytest.raises(ValueError, match="unknown task 'sdxl'"):
        build_task("sdxl", {}, seed=0)


def test_fm_train_runs_and_resumes_on_tiny_sd3(tiny_sd3, tmp_path, capsys):
    config = tmp_path / "sd3.yaml"
    values = tiny_image_train_config(tiny_sd3, tmp_path / "run", time_shift=3.0, guidance_scale=4.5)
    config.write_text(json.dumps(values))  # JSON is YAML
    cli.main(["fm", "train", "--config", str(config)])
    cli.main(["fm", "train", "--config", str(config), "--set", "trainer.num_steps=3", "--resume"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert all({"eval/reward", "eval/diversity", "eval/w2"} <= set(row) for row in rows)
    assert sorted(p.name for p in (tmp_path / "run" / "eval_grids").iterdir()) == [f"step-0000000{i}.png" for i in range(4)]
    out = capsys.readouterr().out
    assert "step     3: reward" in out and f"weights for diffusers: {tmp_path / 'run' / 'lora'}" in out
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_weighted_rewards_and_an_unsupported_pipeline_is_refused(tiny_sd3, tmp_path):
    from adrpo.rewards.image import WeightedSum

    clip = {"type": "clip_score", "model": str(tiny_sd3[1])}
    task = make_task(tiny_sd3, reward=[{**clip, "weight": 1.0}, {"type": "pick_score", "model": str(tiny_sd3[1]), "weight": 0.5}])
    assert isinstance(task.reward, WeightedSum) and task.reward.weights == [1.0, 0.5]
    latents = torch.randn(2, 4, 8, 8)
    prompts = ["a red cat"] * 2
    clip_part, pick_part = (r(latents, prompts) for r in task.reward.rewards)
    torch.testing.assert_close(task.reward(latents, prompts), clip_part + 0.5 * pick_part)
    assert task.embed(latents).shape[0] == 2  # ClipDiversity from the first CLIP model
    with pytest.raises(ValueError, match="need one weight per reward"):
        WeightedSum([clip_part], [])

    fake = tmp_path / "sdxl"
    fake.mkdir()
    (fake / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match=r"is a 'StableDiffusionXLPipeline'; the text_to_image task supports \['StableDiffusion3Pipeline', 'FluxPipeline'\]"):
        build_task("text_to_image", dict(pipeline=str(fake), reward=clip, prompts=PROMPTS), seed=0)


def test_gradient_checkpointing_and_micro_batches_train_the_same_adapters(tiny_sd3, tmp_path):
    adapters = []
    for options in ({}, {"gradient_checkpointing": True, "micro_batch_size": 3}):
        task = make_task(tiny_sd3)
        config = FlowConfig(num_steps=1, prompts_per_step=2, group_size=2, sampling_steps=2, learning_rate=1e-2, output_dir=str(tmp_path / str(len(adapters))),
                            report_to=["none"], progress_bar=False, **LORA, **options)
        trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts)
        assert task.pipeline.transformer.gradient_checkpointing == bool(options)
        trainer.train()
        adapters.append({name: p.detach().clone() for name, p in trainer.trainable.items()})
    assert any(p.abs().sum() > 0 for name, p in adapters[0].items() if "lora_B" in name)  # the step moved the adapters
    for name in adapters[0]:
        torch.testing.assert_close(adapters[1][name], adapters[0][name], rtol=1e-4, atol=1e-6)


def test_a_pipeline_without_a_needed_text_encoder_is_refused_by_name(tiny_sd3, tmp_path):
    import shutil

    folder = tmp_path / "no-clip-g"
    shutil.copytree(tiny_sd3[0], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_2"] = index["tokenizer_2"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"the StableDiffusion3Pipeline has no text_encoder_2 \(CLIP-G\); it is needed to encode prompts"):
        make_task((folder, tiny_sd3[1]))


def test_prompts_from_a_drawbench_style_csv_and_its_errors(tiny_sd3, tmp_path):
    csv = tmp_path / "drawbench.csv"
    csv.write_text('Prompts,Category\n"A red colored car.",Colors\n"A black apple and a green backpack.",Colors\n')
    task = make_task(tiny_sd3, prompts={"path": str(csv), "prompt_column": "Prompts"}, eval_prompts=["a blue dog"])
    assert task.train_prompts == ["A red colored car.", "A black apple and a green backpack."]
    assert task.eval_prompts == ["a blue dog", "a blue dog"]
    with pytest.raises(ValueError, match=r"prompts has no column\(s\) \['prompt_text'\]; columns: \['Prompts', 'Category'\]"):
        make_task(tiny_sd3, prompts={"path": str(csv), "prompt_column": "prompt_text"})
    with pytest.raises(ValueError, match="eval_prompts needs 'path'"):
        make_task(tiny_sd3, eval_prompts={"split": "test"})


def test_freed_text_encoders_leave_every_known_prompt_encoded(tiny_sd3, tmp_path):
    task = make_task(tiny_sd3, free_text_encoders=True, eval_prompts=["a green apple"])
    kept = make_task(tiny_sd3, eval_prompts=["a green apple"]).base_model()
    model = task.base_model()
    assert task.pipeline.text_encoder is None and task.pipeline.text_encoder_2 is None
    for prompt in ["", *PROMPTS, "a green apple"]:
        torch.testing.assert_close(model.encode_prompts([prompt]), kept.encode_prompts([prompt]))
    config = FlowConfig(num_steps=1, prompts_per_step=2, group_size=2, sampling_steps=2, guidance_scale=4.5, output_dir=str(tmp_path),
                        report_to=["none"], progress_bar=False, **LORA)
    rows = FlowTrainer(config, model, task.reward, task.train_prompts).train(evaluator=task.evaluate)
    assert rows[-1]["step"] == 1 and "eval/reward" in rows[-1]
    with pytest.raises(ValueError, match="prompt 'a new prompt' was not encoded before the text encoders were freed"):
        model.encode_prompts(["a new prompt"])


def test_each_launched_process_loads_the_pipeline_on_its_own_gpu(monkeypatch):
    from adrpo.tasks.text_to_image import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert local_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device() == torch.device("cpu")


def test_eval_grids_reach_tensorboard_and_wandb(tiny_sd3, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = make_task(tiny_sd3)
    config = FlowConfig(num_steps=1, prompts_per_step=2, group_size=2, sampling_steps=2, output_dir=str(tmp_path),
                        report_to=["tensorboard"], progress_bar=False, **LORA)
    trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts)
    logged = []
    wandb = type("FakeWandb", (), {"name": "wandb", "log": lambda self, values, step, **kwargs: None, "finish": lambda self: None,
                                   "log_images": lambda self, values, step: logged.append((step, values))})()
    trainer.accelerator.trackers.append(wandb)
    trainer.train(evaluator=task.evaluate)
    assert [step for step, _ in logged] == [0, 1]
    assert logged[0][1]["eval/samples"][0].shape == (2 * 8, 2 * 8, 3)  # 2 prompts x 2 samples of 8 px
    events = [EventAccumulator(str(path.parent)).Reload() for path in tmp_path.rglob("events.out.tfevents.*")]
    assert any("eval/samples" in e.Tags()["images"] for e in events)


def test_the_velocity_model_names_its_transformer_blocks_for_fsdp_wrapping(tiny_sd3):
    """accelerate's TRANSFORMER_BASED_WRAP reads the prepared model's _no_split_modules (through peft's
    wrappers): each JointTransformerBlock becomes its own FSDP2 unit instead of one unit for the whole model."""
    from adrpo.flow.lora import add_lora

    model = make_task(tiny_sd3).base_model()
    assert model._no_split_modules == ["JointTransformerBlock"]
    assert add_lora(model, rank=2, alpha=2, target_modules=["to_q"])._no_split_modules == ["JointTransformerBlock"]
