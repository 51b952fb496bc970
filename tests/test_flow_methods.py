"""The flow method table (adrpo/flow/methods.py) on hand-computed numbers: ``adrpo`` feeds the
*clipped* advantage to both the matching weight and the coefficient β0 − clip(A), paper Eq. 6."""

from __future__ import annotations

import torch

from adrpo.flow.methods import LOSSES, LossBatch
from conftest import make_config


def test_adrpo_method_weights_the_matching_term_by_the_clipped_advantage(tmp_path):
    cfg = make_config(tmp_path, beta0=1.0, adv_clip_min=-0.5, adv_clip_max=0.5)
    v = torch.zeros(3, 2, requires_grad=True)  # (N, D)
    u = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # ‖v − u‖² averaged over D: 1, 4, 9
    v_ref = torch.tensor([[2.0, 2.0], [1.0, 1.0], [1.0, -1.0]])  # ‖v − v_ref‖²: 4, 1, 1
    advantages = torch.tensor([-2.0, 0.25, 3.0])  # two beyond the clip: clip(A) = -0.5, 0.25, 0.5
    batch = LossBatch(v=v, u=u, v_ref=v_ref, rewards=torch.zeros(3), advantages=advantages, group_size=3)

    out = LOSSES["adrpo"](batch, cfg)

    # clip(A)·match + (β0 − clip(A))·w2 = -0.5·1 + 1.5·4, 0.25·4 + 0.75·1, 0.5·9 + 0.5·1 = 5.5, 1.75, 5.0
    # (the unclipped A would give 4.0, 1.75, 27.5)
    torch.testing.assert_close(out.per_sample, torch.tensor([5.5, 1.75, 5.0]))
    # d/dv at v = 0: (2/D)·[clip(A)·(v − u) + c·(v − v_ref)] = −(clip(A)·u + c·v_ref), D = 2
    out.per_sample.sum().backward()
    torch.testing.assert_close(v.grad, torch.tensor([[-2.5, -2.5], [-1.25, -1.25], [-2.0, -1.0]]))
    d = out.diagnostics
    assert (d["coef_min"].item(), d["coef_max"].item()) == (0.5, 1.5)
    torch.testing.assert_close(d["frac_clipped"], torch.tensor(2 / 3))
    torch.testing.assert_close(d["match"], torch.tensor(14 / 3))
    torch.testing.assert_close(d["w2"], torch.tensor(2.0))
