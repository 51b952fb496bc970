"""Euler ODE sampling of a velocity model with classifier-free guidance, and the switch of a
model between training and evaluation mode that the trainer's sampler makes every step."""

from __future__ import annotations

import torch
from torch import nn

from adrpo.core.paths import shifted_time_grid
from adrpo.flow.models.base import VelocityModel


def guided_velocity(
    model: VelocityModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    null_cond: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """v_uncond + w·(v_cond − v_uncond), one batched forward: (N, *D) -> (N, *D).

    w = 1 is the plain conditional model and costs a single forward of N.
    """
    if guidance_scale == 1.0:
        return model(x_t, t, cond)
    v_cond, v_uncond = model(
        torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null_cond])
    ).chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample_euler(
    model: VelocityModel,
    cond: torch.Tensor,
    x0: torch.Tensor,
    *,
    num_steps: int,
    guidance_scale: float = 1.0,
    shift: float = 1.0,
    grid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t, c) from t = 0 (noise x0) to t = 1 with Euler steps.

    Args:
        model: the velocity model (in eval mode if it has dropout).
        cond: (N, ...) conditioning from ``model.encode_prompts``.
        x0: (N, *D) starting noise.
        num_steps: Euler steps; the number of function evaluations is num_steps, doubled
            when ``guidance_scale`` != 1.
        guidance_scale: classifier-free guidance weight w.
        shift: time-grid shift (see ``adrpo.core.paths.shifted_time_grid``).
        grid: (num_steps + 1,) increasing times from 0 to 1 to use instead of the shifted
            grid, e.g. a diffusers scheduler's (``model.time_grid``).

    Returns:
        (N, *D) samples x1.
    """
    grid = (shifted_time_grid(num_steps, shift=shift) if grid is None else grid).to(x0.device)
    if grid.shape != (num_steps + 1,):
        raise ValueError(f"grid must hold num_steps + 1 = {num_steps + 1} times, got shape {tuple(grid.shape)}")
    null_cond = model.null_condition(x0.shape[0]) if guidance_scale != 1.0 else cond
    x = x0
    for t0, t1 in zip(grid[:-1], grid[1:]):
        t = t0.expand(x.shape[0]).to(x.dtype)
        x = x + (t1 - t0) * guided_velocity(model, x, t, cond, null_cond, guidance_scale)
    return x


def set_training(model: nn.Module, mode: bool) -> None:
    """Put ``model`` and all its submodules in training (True) or evaluation (False) mode, as
    ``model.train()`` and ``model.eval()`` do.

    Where no module overrides ``train``, ``eval`` or ``__setattr__``, those calls only set each
    module's ``training`` flag, recursing through ``Module.__setattr__``; one loop over the modules
    does the same in under half the time, about 0.1 ms less per step of the digits model, whose
    sampler switches to evaluation and back. Otherwise (peft's DoRA layers and transformers'
    models override ``train``) the model's own method runs.
    """
    modules = list(model.modules())
    if not all(map(_only_sets_the_flag, modules)):
        if mode:
            model.train()
        else:
            model.eval()
        return
    for module in modules:
        object.__setattr__(module, "training", mode)  # all Module.__setattr__ does with a bool


def _only_sets_the_flag(module: nn.Module) -> bool:
    """Whether ``module.train(mode)`` and ``module.eval()`` only set ``training`` and recurse."""
    cls = type(module)
    return cls.train is nn.Module.train and cls.eval is nn.Module.eval and cls.__setattr__ is nn.Module.__setattr__
