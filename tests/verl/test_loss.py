"""The wrapped verl ppo_loss: stock verl's bit for bit at A = 0 and with ADRPO off, (β0 − A_clip)·KL row by row."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.workers", reason="verl is not installed here: tests/verl run in their own environment, make verl-test")

import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402
from verl.trainer.ppo.core_algos import kl_penalty  # noqa: E402
from verl.utils.metric import AggregationType, Metric  # noqa: E402
from verl.workers.utils import losses  # noqa: E402
from verl.workers.utils.padding import no_padding_2_padding  # noqa: E402

from adrpo.integrations import verl as plugin  # noqa: E402

# Every estimator verl 0.9.1's kl_penalty computes ("full" raises NotImplementedError in verl itself),
# with the straight-through "+" variants, and every loss_agg_mode its ActorConfig admits.
KL_TYPES = ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "k2+", "k3+", "low_var_kl+", "abs+"]
AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
BETA0 = 0.04

# Row advantages and, worked out by hand, the coefficients: clip to [−β0, β0] = [−0.04, 0.04] gives
# [−0.04, −0.02, 0.01, 0.04]; β0 − that = [0.08, 0.06, 0.03, 0.00]. Two of four rows are clipped.
ROW_ADVANTAGES = [-0.1, -0.02, 0.01, 0.5]
COEFFICIENTS = [0.08, 0.06, 0.03, 0.0]
REVERSED = [0.0, 0.02, 0.05, 0.08]  # β0 + A_clip: the sign error the test must catch


def run(loss_fn, config, batch, advantages, batch_info):
    """Loss, metrics and the gradient on the log-probs of one call of ``loss_fn`` on a fresh batch."""
    log_probs, data = batch(advantages, batch_info)
    loss, metrics = loss_fn(config, {"log_probs": log_probs}, data)
    loss.backward()
    return loss.detach(), metrics, log_probs.grad


def hand_kl_term(log_probs, data, coefficients, config) -> torch.Tensor:
    """Σ_b coefficient_b × row b's share of the aggregated KL, each loss_agg_mode written out from its definition.

    The per-token KL (B, R) is verl's own kl_penalty on verl's slice of the packed log-probs.
    """
    kld = kl_penalty(no_padding_2_padding(log_probs, data), data["ref_log_prob"], config.kl_loss_type)  # (B, R)
    mask = data["response_mask"].float()  # (B, R)
    dp = data["dp_size"]
    tokens = data["batch_num_tokens"] or mask.sum()  # tokens of the global batch (else of this micro-batch)
    responses = data["global_batch_size"] or (mask.sum(dim=1) > 0).sum()
    horizon = config.loss_scale_factor or mask.shape[1]
    term = torch.zeros(())
    for b, coefficient in enumerate(coefficients):
        row_sum, row_tokens = (kld[b] * mask[b]).sum(), mask[b].sum()
        share = {
            "token-mean": row_sum / tokens * dp,
            "token-sum": row_sum * dp,
            "seq-mean-token-sum": row_sum / responses * dp,
            "seq-mean-token-sum-norm": row_sum / responses * dp / horizon,
            "seq-mean-token-mean": row_sum / row_tokens / responses * dp,
        }[config.loss_agg_mode]
        term = term + coefficient * share
    return term


@pytest.mark.parametrize("batch_info", ["local", "global"])
@pytest.mark.parametrize("loss_agg_mode", AGG_MODES)
@pytest.mark.parametrize("kl_loss_type", KL_TYPES)
def test_zero_advantage_is_stock_verl_bitwise(actor_config, batch, kl_loss_type, loss_agg_mode, batch_info):
    """A = 0 everywhere: coefficient β0 for every row, so the loss and its gradient are stock verl's at
    kl_loss_coef = β0 exactly (torch.equal, not a tolerance)."""
    scale = 7 if batch_info == "global" else None
    kwargs = dict(kl_loss_type=kl_loss_type, loss_agg_mode=loss_agg_mode, loss_scale_factor=scale)
    zeros = [0.0] * 4
    stock_loss, stock_metrics, stock_grad = run(plugin._STOCK_PPO_LOSS, actor_config(adrpo=None, **kwargs), batch, zeros, batch_info)
    loss, metrics, grad = run(losses.ppo_loss, actor_config(**kwargs), batch, zeros, batch_info)
    assert torch.equal(loss, stock_loss)
    assert torch.equal(grad, stock_grad)
    assert grad.abs().sum() > 0
    assert metrics["kl_loss"].values == stock_metrics["kl_loss"].values
    assert metrics["kl_coef"] == stock_metrics["kl_coef"] == BETA0
    assert metrics["adrpo/coef_mean"].values == pytest.approx([BETA0])
    assert metrics["adrpo/frac_clipped"].values == [0.0]


@pytest.mark.parametrize("batch_info", ["local", "global"])
@pytest.mark.parametrize("loss_agg_mode", AGG_MODES)
@pytest.mark.parametrize("kl_loss_type", ["k1", "low_var_kl", "k3+", "abs"])
def test_row_coefficients_match_hand_computation(actor_config, batch, kl_loss_type, loss_agg_mode, batch_info):
    """Advantages differing by row: the KL term (ADRPO's loss minus verl's without KL loss) and its gradient
    equal Σ_b (β0 − A_clip,b) × row b's KL share computed by hand; the reversed β0 + A_clip does not."""
    scale = 7 if batch_info == "global" else None
    kwargs = dict(kl_loss_type=kl_loss_type, loss_agg_mode=loss_agg_mode, loss_scale_factor=scale)
    config = actor_config(**kwargs)
    loss, _, grad = run(losses.ppo_loss, config, batch, ROW_ADVANTAGES, batch_info)
    no_kl = actor_config(adrpo=None, use_kl_loss=False, **kwargs)
    base_loss, _, base_grad = run(plugin._STOCK_PPO_LOSS, no_kl, batch, ROW_ADVANTAGES, batch_info)

    log_probs, data = batch(ROW_ADVANTAGES, batch_info)
    expected = hand_kl_term(log_probs, data, COEFFICIENTS, config)
    expected.backward()
    assert expected.abs() > 1e-3
    assert_close(loss - base_loss, expected.detach(), rtol=1e-5, atol=1e-7)
    assert_close(grad - base_grad, log_probs.grad, rtol=1e-5, atol=1e-7)
    # the last row's coefficient is 0: its 4 response log-probs (packed positions −5..−2, verl reads each
    # token's log-prob one position to the left) get no KL gradient; the first row's (2..6) do
    assert torch.equal(grad[-5:-1], base_grad[-5:-1])
    assert not torch.equal(grad[2:7], base_grad[2:7])

    with pytest.raises(AssertionError):
        assert_close(loss - base_loss, hand_kl_term(*batch(ROW_ADVANTAGES, batch_info), REVERSED, config).detach())


def test_diagnostics_and_kl_metric(actor_config, batch):
    """adrpo/* reach verl's metrics with verl's aggregation types; kl_loss stays verl's unweighted KL."""
    _, metrics, _ = run(losses.ppo_loss, actor_config(), batch, ROW_ADVANTAGES, "local")
    _, stock_metrics, _ = run(plugin._STOCK_PPO_LOSS, actor_config(adrpo=None), batch, ROW_ADVANTAGES, "local")
    # coefficients [0.08, 0.06, 0.03, 0.00]: mean 0.17 / 4 = 0.0425, min 0, max 0.08; A = −0.1 and 0.5 clipped
    expected = {"coef_mean": 0.0425, "coef_min": 0.0, "coef_max": 0.08, "frac_clipped": 0.5, "frac_negative": 0.0}
    for key, value in expected.items():
        assert metrics[f"adrpo/{key}"].values == [pytest.approx(value)], key
    assert metrics["adrpo/coef_min"].aggregation == AggregationType.MIN
    assert metrics["adrpo/coef_max"].aggregation == AggregationType.MAX
    assert metrics["adrpo/coef_mean"].aggregation == AggregationType.MEAN
    assert metrics["kl_loss"].values == stock_metrics["kl_loss"].values
    assert metrics["kl_loss"].aggregation == stock_metrics["kl_loss"].aggregation
    assert metrics["actor/pg_loss"].values == stock_metrics["actor/pg_loss"].values

    # verl's reduction over two data-parallel ranks: mean of means, min and max over all values
    _, other, _ = run(losses.ppo_loss, actor_config(), batch, [0.0, 0.0, -0.03, 0.03], "local")
    assert Metric.aggregate_dp([metrics["adrpo/coef_mean"], other["adrpo/coef_mean"]]) == pytest.approx((0.0425 + 0.04) / 2)
    assert Metric.aggregate_dp([metrics["adrpo/coef_max"], other["adrpo/coef_max"]]) == pytest.approx(0.08)
    assert Metric.aggregate_dp([metrics["adrpo/coef_min"], other["adrpo/coef_min"]]) == pytest.approx(0.0)


def test_negative_coefficient_share(actor_config, batch):
    """adrpo_adv_clip_max = 2·β0 lets the best responses' coefficient go below 0: 0.04 − 0.08 = −0.04."""
    with pytest.warns(UserWarning, match="goes negative"):
        config = actor_config(policy_loss_fields=dict(adrpo_adv_clip_max=0.08))
    _, metrics, _ = run(losses.ppo_loss, config, batch, ROW_ADVANTAGES, "local")
    # A_clip = [−0.04, −0.02, 0.01, 0.08] -> coefficients [0.08, 0.06, 0.03, −0.04]; one of four negative
    assert metrics["adrpo/frac_negative"].values == [0.25]
    assert metrics["adrpo/coef_min"].values == [pytest.approx(-0.04)]


@pytest.mark.parametrize("adrpo", [False, None], ids=["use_adrpo=False", "verl-policy-loss"])
@pytest.mark.parametrize("loss_agg_mode", AGG_MODES)
def test_adrpo_off_is_stock_verl(actor_config, batch, adrpo, loss_agg_mode):
    """ADRPO switched off (or never named): the wrap returns stock verl's loss, gradient and metrics exactly."""
    config = actor_config(adrpo=adrpo, loss_agg_mode=loss_agg_mode)
    loss, metrics, grad = run(losses.ppo_loss, config, batch, ROW_ADVANTAGES, "global")
    stock_loss, stock_metrics, stock_grad = run(plugin._STOCK_PPO_LOSS, config, batch, ROW_ADVANTAGES, "global")
    assert torch.equal(loss, stock_loss)
    assert torch.equal(grad, stock_grad)
    assert metrics.keys() == stock_metrics.keys()
    assert not any(key.startswith("adrpo/") for key in metrics)
    assert all(getattr(metrics[k], "values", metrics[k]) == getattr(stock_metrics[k], "values", stock_metrics[k]) for k in metrics)


def test_kl_penalty_is_restored_after_a_call(actor_config, batch):
    """The weighted kl_penalty lives for one ppo_loss call only, also when that call raises."""
    run(losses.ppo_loss, actor_config(), batch, ROW_ADVANTAGES, "local")
    assert losses.kl_penalty is kl_penalty
    with pytest.raises(NotImplementedError):
        run(losses.ppo_loss, actor_config(kl_loss_type="full"), batch, ROW_ADVANTAGES, "local")
    assert losses.kl_penalty is kl_penalty
