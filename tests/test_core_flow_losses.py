"""Flow-matching losses: hand values, the ADRPO-FM special cases, ORW, RAFT and Flow-DPO."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from adrpo.core.coefficient import adaptive_coefficient
from adrpo.core.flow_losses import (
    adrpo_fm_loss,
    cfm_loss,
    flow_dpo_loss,
    orw_cfm_w2_loss,
    orw_weights,
    preference_pairs,
    raft_loss,
    regularized_fm_loss,
    squared_error,
    top_fraction_mask,
)

# Shared tiny tensors, N = 4 samples, D = 2:
#   v − u     = [(1,0), (0,2), (0,-1), (2,0)] -> ‖v − u‖²/D     = [0.5, 2, 0.5, 2]
#   v − v_ref = [(0,1), (0,1), (1,0),  (1,0)] -> ‖v − v_ref‖²/D = [0.5, 0.5, 0.5, 0.5]
#   v_ref − u = [(1,-1), (0,1), (-1,-1), (1,0)] -> ‖v_ref − u‖²/D = [1, 0.5, 1, 0.5]
V = torch.tensor([[1.0, 1.0], [0.0, 2.0], [1.0, 0.0], [3.0, 1.0]])
U = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
V_REF = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [2.0, 1.0]])


def _rand(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- squared error / CFM


def test_squared_error_averages_over_data_dims():
    # row 0: (0, 2, 3)² -> 13/3; row 1: (-1, -1, -1)² -> 1
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert_close(squared_error(a, b), torch.tensor([13.0 / 3.0, 1.0]))
    # (N, C, H, W): mean over C·H·W, so the value does not grow with resolution
    assert_close(squared_error(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)), torch.ones(2))
    assert_close(squared_error(torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)), torch.ones(2))


def test_squared_error_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        squared_error(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        squared_error(torch.zeros(2, 4), torch.zeros(2, 2, 2))


def test_cfm_loss_values():
    assert_close(cfm_loss(V, U).per_sample, torch.tensor([0.5, 2.0, 0.5, 2.0]))


# ---------------------------------------------------------------- regularized FM


def test_regularized_fm_loss_by_hand():
    # match [0.5, 2, 0.5, 2], w2 [0.5]*4
    # weights match [1, 0.5, 0, 2], reg [2, 3, 1, 0]
    #   -> [0.5 + 1, 1 + 1.5, 0 + 0.5, 4 + 0] = [1.5, 2.5, 0.5, 4]
    out = regularized_fm_loss(
        V, U, V_REF,
        match_weight=torch.tensor([1.0, 0.5, 0.0, 2.0]),
        reg_weight=torch.tensor([2.0, 3.0, 1.0, 0.0]),
    )
    assert_close(out.per_sample, torch.tensor([1.5, 2.5, 0.5, 4.0]))
    # diagnostics: mean match (0.5+2+0.5+2)/4 = 1.25, mean w2 0.5
    assert_close(out.diagnostics["match"], torch.tensor(1.25))
    assert_close(out.diagnostics["w2"], torch.tensor(0.5))


@pytest.mark.parametrize("name", ["match_weight", "reg_weight"])
def test_regularized_fm_loss_weight_shape_raises(name):
    weights = {"match_weight": torch.ones(4), "reg_weight": torch.ones(4)}
    weights[name] = torch.ones(4, 1)
    with pytest.raises(ValueError, match=name):
        regularized_fm_loss(V, U, V_REF, **weights)


# ---------------------------------------------------------------- ADRPO-FM special cases


def test_adrpo_zero_advantage_is_pure_w2_pull():
    # A ≡ 0 -> coefficient β0 -> loss β0·‖v − v_ref‖²/D = 0.8·0.5 = 0.4 per sample, whatever u is
    beta0 = 0.8
    coef, a, _ = adaptive_coefficient(torch.zeros(4), beta0=beta0, a_min=-1.0, a_max=1.0)
    out = adrpo_fm_loss(V, U, V_REF, advantages=a, coefficient=coef)
    assert_close(out.per_sample, torch.full((4,), 0.4))
    other_u = U + 10.0
    assert_close(adrpo_fm_loss(V, other_u, V_REF, advantages=a, coefficient=coef).per_sample, out.per_sample)
    # gradient: β0·2/D·(v − v_ref)
    v = V.clone().requires_grad_(True)
    adrpo_fm_loss(v, U, V_REF, advantages=a, coefficient=coef).per_sample.sum().backward()
    assert_close(v.grad, beta0 * (V - V_REF))


@pytest.mark.parametrize("c", [0.3, 0.5, -0.4])
def test_adrpo_constant_advantage_is_fixed_regularisation(c):
    # constant A = c: match weight c, W2 weight β0 − c, for every sample
    beta0 = 1.0
    coef, a, _ = adaptive_coefficient(torch.full((4,), c), beta0=beta0, a_min=-1.0, a_max=1.0)
    adrpo = adrpo_fm_loss(V, U, V_REF, advantages=a, coefficient=coef).per_sample
    fixed = regularized_fm_loss(
        V, U, V_REF, match_weight=torch.full((4,), c), reg_weight=torch.full((4,), beta0 - c)
    ).per_sample
    by_hand = c * torch.tensor([0.5, 2.0, 0.5, 2.0]) + (beta0 - c) * 0.5
    assert_close(adrpo, fixed)
    assert_close(adrpo, by_hand)
    if c > 0:
        # the ORW-CFM-W2 form: exp(τ·r) = c with τ = 1, r = log c, and α = β0 − c
        orw = orw_cfm_w2_loss(
            V, U, V_REF, rewards=torch.full((4,), math.log(c)), tau=1.0, alpha=beta0 - c
        ).per_sample
        assert_close(adrpo, orw)


def test_adrpo_negative_advantage_pushes_away_from_u():
    # v_ref = v so the W2 term has zero gradient; then d loss/d v = 2/D·A·(v − u).
    # D = 2, A = [-0.5, 0.5, -1, 1]: grad = A·(v − u)
    a = torch.tensor([-0.5, 0.5, -1.0, 1.0])
    v = V.clone().requires_grad_(True)
    out = adrpo_fm_loss(v, U, V.clone(), advantages=a, coefficient=1.0 - a)
    out.per_sample.sum().backward()
    assert_close(v.grad, a[:, None] * (V - U))
    # <grad, v − u> has the sign of A: a descent step moves away from u when A < 0
    inner = (v.grad * (V - U)).sum(dim=1)
    assert (inner[a < 0] < 0).all() and (inner[a > 0] > 0).all()
    stepped = V - 0.1 * v.grad
    before, after = squared_error(V, U), squared_error(stepped, U)
    assert (after[a < 0] > before[a < 0]).all()
    assert (after[a > 0] < before[a > 0]).all()


@pytest.mark.parametrize("shape", [(3, 4), (2, 1, 2, 2)])
def test_adrpo_gradient_matches_formula_and_analytic(shape):
    n = shape[0]
    d = math.prod(shape[1:])
    v0, u, v_ref = _rand(*shape, seed=10), _rand(*shape, seed=11), _rand(*shape, seed=12)
    beta0 = 0.7
    a = torch.tensor([-0.6, 0.4, 1.2][:n], dtype=torch.float64)  # mixed signs, one with β0 − A < 0
    coef = beta0 - a
    ex = (slice(None),) + (None,) * (len(shape) - 1)  # (N,) -> (N, 1, ..., 1)

    v = v0.clone().requires_grad_(True)
    loss = adrpo_fm_loss(v, u, v_ref, advantages=a, coefficient=coef).per_sample
    loss.sum().backward()

    w = v0.clone().requires_grad_(True)
    independent = (a[ex] * (w - u) ** 2 + coef[ex] * (w - v_ref) ** 2).reshape(n, -1).mean(dim=1)
    independent.sum().backward()

    analytic = 2.0 / d * (a[ex] * (v0 - u) + coef[ex] * (v0 - v_ref))
    assert_close(loss.detach(), independent.detach())
    assert_close(v.grad, w.grad)
    assert_close(v.grad, analytic)


def test_adrpo_tilted_regression_identity():
    # A·e(v,u) + (β0 − A)·e(v,v_ref) − β0·e(v, m), m = v_ref + (A/β0)(u − v_ref), is free of v;
    # expanding the squares, the constant is A(β0 − A)/β0 · e(u, v_ref).
    n, d = 3, 5
    u, v_ref = _rand(n, d, seed=20), _rand(n, d, seed=21)
    beta0 = 0.9
    a = torch.tensor([-0.5, 0.3, 0.8], dtype=torch.float64)
    m = v_ref + (a / beta0)[:, None] * (u - v_ref)

    def residual(v):
        loss = adrpo_fm_loss(v, u, v_ref, advantages=a, coefficient=beta0 - a).per_sample
        return loss - beta0 * squared_error(v, m)

    r1, r2 = residual(_rand(n, d, seed=22)), residual(10 * _rand(n, d, seed=23))
    assert_close(r1, r2)
    assert_close(r1, a * (beta0 - a) / beta0 * squared_error(u, v_ref))


# ---------------------------------------------------------------- gradients reach the model


def _tiny_models():
    torch.manual_seed(0)
    policy = torch.nn.Linear(3, 2)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        ref.weight.add_(0.3)  # so that v ≠ v_ref
    x = _rand(4, 3, seed=30, dtype=torch.float32)
    u = _rand(4, 2, seed=31, dtype=torch.float32)
    return policy, ref, x, u


_REWARDS = torch.tensor([0.2, 1.0, -0.5, 0.7])
_A = torch.tensor([0.5, -0.5, 1.0, -1.0])
_LOSSES = {
    "cfm": lambda v, u, vr: cfm_loss(v, u),
    "adrpo": lambda v, u, vr: adrpo_fm_loss(v, u, vr, advantages=_A, coefficient=1.0 - _A),
    "adrpo_w2_only": lambda v, u, vr: adrpo_fm_loss(
        v, u, vr, advantages=torch.zeros(4), coefficient=torch.ones(4)
    ),
    "match_only": lambda v, u, vr: regularized_fm_loss(
        v, u, vr, match_weight=torch.ones(4), reg_weight=torch.zeros(4)
    ),
    "w2_only": lambda v, u, vr: regularized_fm_loss(
        v, u, vr, match_weight=torch.zeros(4), reg_weight=torch.ones(4)
    ),
    "orw": lambda v, u, vr: orw_cfm_w2_loss(v, u, vr, rewards=_REWARDS, tau=1.0, alpha=0.5),
    "orw_normalized": lambda v, u, vr: orw_cfm_w2_loss(
        v, u, vr, rewards=_REWARDS, tau=1.0, alpha=0.5, normalize=True
    ),
    "raft": lambda v, u, vr: raft_loss(v, u, rewards=_REWARDS, group_size=2, fraction=0.5),
    "flow_dpo": lambda v, u, vr: flow_dpo_loss(
        v, u, vr, winners=torch.tensor([1, 3]), losers=torch.tensor([0, 2]), beta=1.0
    ),
}


@pytest.mark.parametrize("name", list(_LOSSES))
def test_every_loss_sends_gradient_to_policy_not_reference(name):
    policy, ref, x, u = _tiny_models()
    v, v_ref = policy(x), ref(x)  # v_ref still carries a graph to ref's parameters
    out = _LOSSES[name](v, u, v_ref)
    out.per_sample.mean().backward()
    assert policy.weight.grad is not None and policy.bias.grad is not None
    assert policy.weight.grad.abs().sum() > 0 and policy.bias.grad.abs().sum() > 0
    assert ref.weight.grad is None and ref.bias.grad is None
    assert all(not t.requires_grad for t in out.diagnostics.values())


# ---------------------------------------------------------------- ORW-CFM-W2


def test_orw_weights_values():
    # τ = 2, r = [0, 1, -1] -> exp(2r) = [1, e², e⁻²]
    r = torch.tensor([0.0, 1.0, -1.0])
    e2 = math.exp(2.0)
    assert_close(orw_weights(r, tau=2.0, normalize=False), torch.tensor([1.0, e2, 1 / e2]))
    # normalised: rescaled to mean 1 -> 3·[1, e², e⁻²]/(1 + e² + e⁻²)
    z = 1 + e2 + 1 / e2
    w = orw_weights(r, tau=2.0, normalize=True)
    assert_close(w, torch.tensor([3 / z, 3 * e2 / z, 3 / (e2 * z)]))
    assert_close(w.mean(), torch.tensor(1.0))


def test_orw_normalize_survives_huge_tau_r():
    # τ·r = [1000, 999, 0]: exp overflows float32, softmax does not.
    # weights 3·[1, e⁻¹, e⁻¹⁰⁰⁰]/(1 + e⁻¹)
    r = torch.tensor([1000.0, 999.0, 0.0])
    w = orw_weights(r, tau=1.0, normalize=True)
    assert torch.isfinite(w).all()
    s = 1 + math.exp(-1.0)
    assert_close(w, torch.tensor([3 / s, 3 * math.exp(-1.0) / s, 0.0]))
    assert_close(w.mean(), torch.tensor(1.0))


def test_orw_unnormalized_overflow_raises():
    with pytest.raises(ValueError, match="overflow"):
        orw_weights(torch.tensor([1000.0, 0.0]), tau=1.0, normalize=False)
    with pytest.raises(ValueError, match="overflow"):
        orw_cfm_w2_loss(V, U, V_REF, rewards=torch.tensor([0.0, 0.0, 0.0, 100.0]), tau=1.0, alpha=0.1)


def test_orw_cfm_w2_loss_by_hand():
    # r = [0, log 2, 0, log 3], τ = 1 -> weights [1, 2, 1, 3]; α = 0.5
    # match [0.5, 2, 0.5, 2], w2 0.5 -> [0.5 + 0.25, 4 + 0.25, 0.5 + 0.25, 6 + 0.25]
    r = torch.tensor([0.0, math.log(2.0), 0.0, math.log(3.0)])
    out = orw_cfm_w2_loss(V, U, V_REF, rewards=r, tau=1.0, alpha=0.5)
    assert_close(out.per_sample, torch.tensor([0.75, 4.25, 0.75, 6.25]))
    assert_close(out.diagnostics["weight_max"], torch.tensor(3.0))
    assert_close(out.diagnostics["w2"], torch.tensor(0.5))


# ---------------------------------------------------------------- RAFT


def test_top_fraction_mask_per_group():
    # G = 4: group 0 [0.1, 0.9, 0.5, 0.3], group 1 [2, -1, 3, 0]
    r = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, -1.0, 3.0, 0.0])
    T, F_ = True, False
    # f = 0.5 -> k = 2: {0.9, 0.5} and {3, 2}
    assert top_fraction_mask(r, group_size=4, fraction=0.5).tolist() == [F_, T, T, F_, T, F_, T, F_]
    # f = 0.1 -> round(0.4) = 0 -> k = max(1, 0) = 1: the best of each group
    assert top_fraction_mask(r, group_size=4, fraction=0.1).tolist() == [F_, T, F_, F_, F_, F_, T, F_]
    # f = 0.75 -> k = 3: drop the worst of each group
    assert top_fraction_mask(r, group_size=4, fraction=0.75).tolist() == [F_, T, T, T, T, F_, T, T]
    # f = 1 keeps everything
    assert top_fraction_mask(r, group_size=4, fraction=1.0).all()


def test_top_fraction_mask_ties_still_keep_k():
    # all rewards tied: still exactly k = round(0.5·6) = 3 per group
    mask = top_fraction_mask(torch.zeros(12), group_size=6, fraction=0.5)
    assert mask.view(2, 6).sum(dim=1).tolist() == [3, 3]


def test_raft_loss_mean_is_mean_over_kept():
    # G = 2, rewards [1, 0 | 0, 5] -> keep samples 0 and 3; their errors 0.5 and 2 -> mean 1.25
    # per sample: error·mask·N/kept = [0.5·2, 0, 0, 2·2] = [1, 0, 0, 4]
    out = raft_loss(V, U, rewards=torch.tensor([1.0, 0.0, 0.0, 5.0]), group_size=2, fraction=0.5)
    assert_close(out.per_sample, torch.tensor([1.0, 0.0, 0.0, 4.0]))
    assert_close(out.per_sample.mean(), torch.tensor(1.25))
    assert_close(out.diagnostics["match"], torch.tensor(1.25))


def test_raft_fraction_one_is_cfm():
    out = raft_loss(V, U, rewards=torch.tensor([1.0, 0.0, 0.0, 5.0]), group_size=2, fraction=1.0)
    assert_close(out.per_sample, cfm_loss(V, U).per_sample)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_raft_bad_fraction_raises(fraction):
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_mask(torch.zeros(4), group_size=2, fraction=fraction)
    with pytest.raises(ValueError, match="fraction"):
        raft_loss(V, U, rewards=torch.zeros(4), group_size=2, fraction=fraction)


# ---------------------------------------------------------------- Flow-DPO


def test_preference_pairs_indices():
    # group 0 [0.1, 0.9, 0.5, 0.3]: order 1, 2, 3, 0 -> pairs (1, 0), (2, 3)
    # group 1 [2, -1, 3, 0] (offset 4): order 6, 4, 7, 5 -> pairs (6, 5), (4, 7)
    r = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, -1.0, 3.0, 0.0])
    winners, losers = preference_pairs(r, group_size=4)
    assert winners.tolist() == [1, 2, 6, 4]
    assert losers.tolist() == [0, 3, 5, 7]
    assert (r[winners] >= r[losers]).all()


def test_preference_pairs_odd_group_and_ties():
    # G = 3 [3, 1, 2]: best 0 with worst 1; the median 2 is unpaired. P = B·⌊3/2⌋ = 2
    r = torch.tensor([3.0, 1.0, 2.0, 5.0, 5.0, 5.0])
    win, lose = preference_pairs(r, group_size=3)
    assert win.shape == (2,) and lose.shape == (2,)
    assert (win[0].item(), lose[0].item()) == (0, 1)
    assert 3 <= win[1].item() < 6 and 3 <= lose[1].item() < 6 and win[1] != lose[1]
    assert (r[win] >= r[lose]).all()


def test_preference_pairs_group_size_one_raises():
    with pytest.raises(ValueError, match="group_size"):
        preference_pairs(torch.zeros(3), group_size=1)


def test_flow_dpo_loss_by_hand():
    # e(v) = [0.5, 2, 0.5, 2], e(v_ref) = [1, 0.5, 1, 0.5]; pairs (0 ≻ 1), (3 ≻ 2)
    # Δ0 = (0.5 − 1) − (2 − 0.5) = −2;  Δ1 = (2 − 0.5) − (0.5 − 1) = 2
    # β = 0.5: loss = softplus(∓1) = [log(1 + e⁻¹), log(1 + e)]; pref_acc 1/2; w2 0.5
    out = flow_dpo_loss(
        V, U, V_REF, winners=torch.tensor([0, 3]), losers=torch.tensor([1, 2]), beta=0.5
    )
    expected = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))])
    assert_close(out.per_sample, expected)
    assert_close(out.per_sample, F.softplus(0.5 * torch.tensor([-2.0, 2.0])))
    assert_close(out.diagnostics["pref_acc"], torch.tensor(0.5))
    assert_close(out.diagnostics["w2"], torch.tensor(0.5))


@pytest.mark.parametrize("beta", [0.1, 5.0, 2000.0])
def test_flow_dpo_at_reference_is_log2(beta):
    # v = v_ref -> Δ = 0 -> softplus(0) = log 2 for every pair, whatever u and β
    out = flow_dpo_loss(
        V, U, V.clone(), winners=torch.tensor([0, 3]), losers=torch.tensor([1, 2]), beta=beta
    )
    assert_close(out.per_sample, torch.full((2,), math.log(2.0)))
    assert_close(out.diagnostics["w2"], torch.tensor(0.0))


def test_flow_dpo_valid_mask_zeroes_pairs():
    kwargs = dict(winners=torch.tensor([0, 3]), losers=torch.tensor([1, 2]), beta=0.5)
    full = flow_dpo_loss(V, U, V_REF, **kwargs).per_sample
    masked = flow_dpo_loss(V, U, V_REF, valid=torch.tensor([True, False]), **kwargs)
    # one of P = 2 pairs is valid: it is scaled by P / 1 so the mean is the valid pair's loss
    assert_close(masked.per_sample, torch.stack([2 * full[0], torch.tensor(0.0)]))
    assert_close(masked.per_sample.mean(), full[0])
    assert_close(masked.diagnostics["frac_tied_pairs"], torch.tensor(0.5))
    assert_close(flow_dpo_loss(V, U, V_REF, **kwargs).diagnostics["frac_tied_pairs"], torch.tensor(0.0))
    # a masked pair sends no gradient either
    v = V.clone().requires_grad_(True)
    flow_dpo_loss(v, U, V_REF, valid=torch.tensor([False, True]), **kwargs).per_sample.sum().backward()
    assert_close(v.grad[[0, 1]], torch.zeros(2, 2))
    assert v.grad[[2, 3]].abs().sum() > 0


def test_flow_dpo_step_does_not_shrink_with_ties():
    # Pairs 0 and 1 are the same pair; marking the second one tied must leave the mean loss
    # and its gradient those of the one valid pair (not half of them).
    v = V.clone().requires_grad_(True)
    one = flow_dpo_loss(v, U, V_REF, winners=torch.tensor([0]), losers=torch.tensor([1]), beta=0.5).per_sample.mean()
    (grad_one,) = torch.autograd.grad(one, v)
    tied = flow_dpo_loss(v, U, V_REF, winners=torch.tensor([0, 0]), losers=torch.tensor([1, 1]), beta=0.5,
                         valid=torch.tensor([True, False])).per_sample.mean()
    (grad_tied,) = torch.autograd.grad(tied, v)
    assert_close(tied, one)
    assert_close(grad_tied, grad_one)
    none_valid = flow_dpo_loss(v, U, V_REF, winners=torch.tensor([0]), losers=torch.tensor([1]), beta=0.5,
                               valid=torch.tensor([False]))
    assert none_valid.per_sample.item() == 0.0 and none_valid.diagnostics["frac_tied_pairs"].item() == 1.0


def test_flow_dpo_sgd_step_prefers_winner():
    # Start at the reference (Δ = 0, loss log 2); one SGD step must make the winner's
    # error relative to the reference smaller than the loser's (Δ < 0 for every pair).
    torch.manual_seed(0)
    policy = torch.nn.Linear(3, 2)
    ref = copy.deepcopy(policy).requires_grad_(False)
    x = _rand(4, 3, seed=40, dtype=torch.float32)
    u = _rand(4, 2, seed=41, dtype=torch.float32)
    rewards = torch.tensor([0.9, 0.1, 0.2, 0.8])  # G = 2 -> pairs (0 ≻ 1), (3 ≻ 2)
    winners, losers = preference_pairs(rewards, group_size=2)
    assert winners.tolist() == [0, 3] and losers.tolist() == [1, 2]

    def delta():
        with torch.no_grad():
            err, err_ref = squared_error(policy(x), u), squared_error(ref(x), u)
        return (err[winners] - err_ref[winners]) - (err[losers] - err_ref[losers])

    assert_close(delta(), torch.zeros(2))
    opt = torch.optim.SGD(policy.parameters(), lr=0.05)
    loss = flow_dpo_loss(policy(x), u, ref(x), winners=winners, losers=losers, beta=1.0)
    assert_close(loss.per_sample, torch.full((2,), math.log(2.0)))
    loss.per_sample.mean().backward()
    opt.step()
    after = delta()
    assert (after < 0).all()
    new_loss = flow_dpo_loss(policy(x), u, ref(x), winners=winners, losers=losers, beta=1.0)
    assert new_loss.per_sample.mean().item() < math.log(2.0)
