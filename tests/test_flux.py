"""FLUX through diffusers on tiny random models: packing, ids and time shift against diffusers'
own code, sampling against FluxPipeline itself, the LoRA reference, and `fm train` + resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adrpo import cli
from adrpo.core.flow_losses import cfm_loss
from adrpo.core.paths import StraightPath
from adrpo.flow.config import FlowConfig
from adrpo.flow.models.flux import FluxVelocity, flux_time_shift, latent_image_ids, pack_latents, unpack_latents
from adrpo.flow.sampler import sample_euler
from adrpo.flow.trainer import FlowTrainer
from conftest import IMAGE_LORA as LORA
from conftest import IMAGE_PROMPTS as PROMPTS
from conftest import tiny_image_task as make_task
from conftest import tiny_image_train_config

FLUX_DEV_SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)


def test_packing_and_ids_match_diffusers_and_round_trip():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    assert packed.shape == (2, 12, 16)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 6, 8, 1), latents)
    assert torch.equal(latent_image_ids(6, 8), FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))


@pytest.mark.parametrize("tokens", [16, 1024, 4096])
def test_time_shift_reproduces_the_scheduler_sigmas(tokens):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from adrpo.core.paths import shifted_time_grid

    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    steps = 10
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=calculate_shift(tokens, 256, 4096, 0.5, 1.15))
    shift = flux_time_shift(scheduler.config, tokens)
    torch.testing.assert_close(1 - shifted_time_grid(steps, shift=shift), scheduler.sigmas.float(), atol=1e-6, rtol=0)
    assert flux_time_shift({"shift": 3.0}, tokens) == 3.0  # static shifting (FLUX.1-schnell-like configs)
    if tokens == 4096:
        assert shift == pytest.approx(np.exp(1.15))


class AnalyticFlux(torch.nn.Module):
    """Predicts FLUX's packed target (noise − data) exactly when all data equal one point x1*."""

    def __init__(self, target: torch.Tensor, guidance_embeds: bool):
        super().__init__()
        self.target = pack_latents(target.unsqueeze(0))
        self.config = type("Config", (), {"in_channels": self.target.shape[-1], "pooled_projection_dim": 2, "guidance_embeds": guidance_embeds})()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = {}

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance, return_dict):
        self.seen = dict(img_ids=img_ids, txt_ids=txt_ids, guidance=guidance)
        sigma = timestep.view(-1, 1, 1)
        return ((hidden_states - self.target) / sigma,)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_analytic_velocity_of_a_known_path_gives_zero_loss(guidance_embeds):
    target = torch.randn(4, 4, 4)
    transformer = AnalyticFlux(target, guidance_embeds)
    model = FluxVelocity(transformer, lambda p: (torch.zeros(len(p), 3, 4), torch.zeros(len(p), 2)), resolution=32, distilled_guidance=2.5)
    assert model.data_shape == (4, 4, 4)
    x0 = torch.randn(5, 4, 4, 4)
    t = torch.rand(5) * 0.9 + 0.05
    x_t, u_t = StraightPath().sample(x0, target.expand(5, -1, -1, -1), t)
    loss = cfm_loss(model(x_t, t, model.encode_prompts(["p"] * 5)), u_t).per_sample
    torch.testing.assert_close(loss, torch.zeros(5), atol=1e-9, rtol=0)
    assert transformer.seen["img_ids"].shape == (4, 3) and torch.equal(transformer.seen["txt_ids"], torch.zeros(3, 3))
    if guidance_embeds:
        assert torch.equal(transformer.seen["guidance"], torch.full((5,), 2.5))
    else:
        assert transformer.seen["guidance"] is None
    with pytest.raises(ValueError, match="resolution 24 must be a multiple of 16"):
        FluxVelocity(transformer, lambda p: None, resolution=24)


def test_sampler_reproduces_the_flux_pipeline(tiny_flux):
    task = make_task(tiny_flux)
    model = task.base_model()
    assert model.time_shift == pytest.approx(flux_time_shift(task.pipeline.scheduler.config, 16))
    x0 = torch.randn(2, *model.data_shape, generator=torch.Generator().manual_seed(0))
    ours = sample_euler(model, model.encode_prompts(PROMPTS), x0, num_steps=4, shift=model.time_shift)
    theirs = task.pipeline(prompt=PROMPTS, height=8, width=8, num_inference_steps=4, guidance_scale=3.5, latents=pack_latents(x0),
                           output_type="latent", max_sequence_length=8).images
    torch.testing.assert_close(pack_latents(ours), theirs, atol=1e-5, rtol=1e-5)


def test_lora_reference_is_the_base_and_the_trainer_takes_the_model_time_grid(tiny_flux, tmp_path):
    task = make_task(tiny_flux)
    config = FlowConfig(num_steps=2, prompts_per_step=2, group_size=2, sampling_steps=2, learning_rate=1e-2,
                        output_dir=str(tmp_path), report_to=["none"], progress_bar=False, **LORA)
    trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts)
    from adrpo.core.paths import shifted_time_grid

    torch.testing.assert_close(trainer.time_grid(10), shifted_time_grid(10, shift=task._model.time_shift))
    assert task._model.time_shift != 1.0
    x_t, t = torch.randn(4, 4, 8, 8), torch.rand(4)
    cond = trainer.policy.encode_prompts(PROMPTS * 2)
    assert torch.equal(trainer.policy(x_t, t, cond), trainer.reference_velocity(x_t, t, cond))
    trainer.train()
    assert not torch.equal(trainer.policy(x_t, t, cond), trainer.reference_velocity(x_t, t, cond))
    shifted = FlowTrainer(FlowConfig(**{**config.to_dict(), "time_shift": 2.0}), make_task(tiny_flux).base_model(), task.reward, PROMPTS)
    torch.testing.assert_close(shifted.time_grid(10), shifted_time_grid(10, shift=2.0))  # the config wins


def test_fm_train_runs_and_resumes_on_tiny_flux(tiny_flux, tmp_path, capsys):
    config = tmp_path / "flux.yaml"
    values = tiny_image_train_config(tiny_flux, tmp_path / "run")
    config.write_text(json.dumps(values))
    cli.main(["fm", "train", "--config", str(config), "--set", "trainer.num_steps=1"])
    cli.main(["fm", "train", "--config", str(config), "--resume"])
    resumed = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in resumed] == [0, 1, 2]
    values["trainer"]["output_dir"] = str(tmp_path / "straight")
    config.write_text(json.dumps(values))
    cli.main(["fm", "train", "--config", str(config)])
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert resumed == straight  # resuming lands exactly where an uninterrupted run does

    # a checkpoint exported afterwards equals the run's own final export; an earlier one differs
    from safetensors.torch import load_file

    for step in (1, 2):
        cli.main(["fm", "export", "--config", str(config), "--checkpoint", str(tmp_path / "straight" / "checkpoints" / f"step-0000000{step}"),
                  "--output", str(tmp_path / f"export-{step}")])
    final = load_file(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors")
    exports = [load_file(tmp_path / f"export-{step}" / "pytorch_lora_weights.safetensors") for step in (1, 2)]
    assert final.keys() == exports[1].keys() and all(torch.equal(final[k], exports[1][k]) for k in final)
    assert any(not torch.equal(final[k], exports[0][k]) for k in final)
    out = capsys.readouterr().out
    assert "step     2: reward" in out and "weights for diffusers (step 1)" in out
    with pytest.raises(SystemExit):
        cli.main(["fm", "export", "--config", str(config), "--checkpoint", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")])
    assert "no checkpoint directory at" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["tiny_sd3", "tiny_flux"])
def test_bfloat16_pipelines_train_without_autocast(family, request, tmp_path):
    task = make_task(request.getfixturevalue(family), dtype="bfloat16")
    config = FlowConfig(num_steps=1, prompts_per_step=2, group_size=2, sampling_steps=2, output_dir=str(tmp_path),
                        report_to=["none"], progress_bar=False, **LORA)
    trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts)
    assert task.pipeline.transformer.dtype == torch.bfloat16 and trainer.policy.compute_dtype == torch.bfloat16
    x_t, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    assert trainer.policy(x_t, t, trainer.policy.encode_prompts(PROMPTS)).dtype == torch.float32
    before = {name: p.detach().clone() for name, p in trainer.trainable.items()}
    trainer.train()
    assert all(p.dtype == torch.float32 for p in trainer.trainable.values())  # peft keeps adapters in float32
    assert any(not torch.equal(before[name], p) for name, p in trainer.trainable.items())


def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


@pytest.mark.parametrize("family", ["tiny_sd3", "tiny_flux"])
@pytest.mark.parametrize("lora", [True, False])
def test_lora_mode_holds_one_base_and_full_finetuning_three(family, lora, request, tmp_path):
    task = make_task(request.getfixturevalue(family))
    model = task.base_model()
    base = held_bytes(model.parameters())
    config = FlowConfig(sampler_refresh_every=2, output_dir=str(tmp_path), report_to=["none"], progress_bar=False, **(LORA if lora else {}))
    trainer = FlowTrainer(config, model, task.reward, task.train_prompts)
    tensors = [*trainer.policy.parameters(), *trainer.state.snapshot.values()]
    if trainer.reference is not None:
        tensors += list(trainer.reference.parameters())
    if lora:  # policy = base + adapters, reference = the same base, snapshot = adapters only
        adapters = held_bytes(trainer.trainable.values())
        assert trainer.reference is None and held_bytes(tensors) == base + 2 * adapters
    else:  # a frozen reference copy and a full snapshot
        assert held_bytes(tensors) == 3 * base


@pytest.mark.parametrize("family", ["tiny_sd3", "tiny_flux"])
@pytest.mark.parametrize("lora", [True, False])
def test_exported_weights_load_into_a_fresh_diffusers_pipeline(family, lora, request, tmp_path):
    from adrpo.tasks.text_to_image import load_pipeline, velocity_model

    folders = request.getfixturevalue(family)
    task = make_task(folders)
    adapters = {**LORA, "lora_alpha": 5} if lora else {}  # alpha != rank: the scale must travel with the weights
    config = FlowConfig(num_steps=2, prompts_per_step=2, group_size=2, sampling_steps=2, learning_rate=0.05, output_dir=str(tmp_path),
                        report_to=["none"], progress_bar=False, **adapters)
    trainer = FlowTrainer(config, task.base_model(), task.reward, task.train_prompts)
    trainer.train()
    folder = task.export(trainer)
    assert folder == tmp_path / ("lora" if lora else "transformer")

    fresh = load_pipeline(str(folders[0]), torch.float32)
    if lora:
        fresh.load_lora_weights(str(folder))
    else:
        fresh.transformer = type(fresh.transformer).from_pretrained(folder)
    reloaded = velocity_model(fresh, resolution=8, max_sequence_length=8, distilled_guidance=3.5)
    x_t, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    cond = trainer.policy.encode_prompts(PROMPTS)
    trained = trainer.policy(x_t, t, cond)
    assert not torch.allclose(trained, trainer.reference_velocity(x_t, t, cond))  # training moved the model
    torch.testing.assert_close(reloaded(x_t, t, cond), trained)
