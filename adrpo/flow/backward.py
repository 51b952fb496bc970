"""The backward pass of one flow step: the method's mean loss over the N = B·G samples,
back-propagated whole or in micro-batches whose gradients add up to exactly the whole batch's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from torch import nn

from adrpo.core.flow_losses import FlowLoss
from adrpo.flow.config import FlowConfig
from adrpo.flow.methods import LossBatch

LossFn = Callable[[LossBatch, FlowConfig], FlowLoss]


def loss_and_backward(
    accelerator: Accelerator,
    model: nn.Module,
    loss_fn: LossFn,
    config: FlowConfig,
    chunks: Sequence[slice],
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    make_batch: Callable[[torch.Tensor], LossBatch],
) -> tuple[torch.Tensor, FlowLoss, torch.Tensor]:
    """Back-propagate ``loss_fn``'s mean loss over the N samples; returns the detached loss,
    the loss output (diagnostics) and the detached policy velocity (N, *D).

    ``model`` is the prepared (possibly DDP- or DeepSpeed-wrapped) policy; x_t (N, *D), t (N,),
    cond (N, ...); ``chunks`` cover range(N); ``make_batch`` builds the method's batch around a
    policy velocity (N, *D).

    With micro-batches, a no-grad forward first gives every sample's velocity; then each
    chunk's velocity is recomputed with gradient and spliced into those values, and the
    full-batch loss is back-propagated through the chunk only. Summed over the chunks this
    is exactly the full batch's gradient, for every method, pairs and batch statistics
    included. Gradient synchronisation across processes happens on the last chunk only.
    """
    if len(chunks) == 1:
        v = model(x_t, t, cond)
        out = loss_fn(make_batch(v), config)
        loss = out.per_sample.mean()
        accelerator.backward(loss)
        return loss.detach(), out, v.detach()
    with torch.no_grad():
        v_all = torch.cat([model(x_t[s], t[s], cond[s]) for s in chunks])
        out = loss_fn(make_batch(v_all), config)
    for s in chunks:
        last = s is chunks[-1]
        # DDP: skip the all-reduce; DeepSpeed: backward() steps the engine only at a boundary.
        # accelerate's own accumulate() flips the same private flag.
        accelerator.gradient_state._set_sync_gradients(last)
        try:
            with nullcontext() if last else accelerator.no_sync(model):
                v_mixed = torch.cat([v_all[: s.start], model(x_t[s], t[s], cond[s]), v_all[s.stop :]])
                accelerator.backward(loss_fn(make_batch(v_mixed), config).per_sample.mean())
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
    return out.per_sample.mean(), out, v_all
