"""Pareto analysis on hand-made point sets: fronts (ties, duplicates, orientation), interpolation
on vertices and edges, Δ beyond / on / behind / out of range, paired per-seed comparison,
verdict rules (SE bar, single seed, majority out of range), staircase hypervolumes, the bootstrap
interval and input validation. Every expected number is derived in a comment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adrpo.core.pareto import (
    Hypervolume,
    bootstrap_ci,
    compare_to_front,
    family_hypervolume,
    front_deltas,
    front_value_at,
    hypervolume_2d,
    pareto_front,
    reference_point,
    summarize_deltas,
    verdict,
)
from adrpo.core.significance import critical_value, student_t_cdf, t_quantile
from adrpo.errors import ConfigError

NAN = math.nan
# The front used throughout: base model (0, 4), then (2, 2), (4, 1). Edges: y = 4 − x on [0, 2],
# y = 3 − x/2 on [2, 4]; inverted: x = 4 − y on y ∈ [2, 4], x = 6 − 2y on y ∈ [1, 2].
FRONT = [[0.0, 4.0], [2.0, 2.0], [4.0, 1.0]]


def family(points: dict[str, dict[int, tuple[float, float]]], names: tuple[str, str] = ("reward", "diversity")):
    """label -> seed -> (x, y) into the metric-dict layout the engine hands over."""
    return {label: {seed: dict(zip(names, xy)) for seed, xy in runs.items()} for label, runs in points.items()}


def runs(per_seed: dict[int, tuple[float, float]], names: tuple[str, str] = ("reward", "diversity")):
    return {seed: dict(zip(names, xy)) for seed, xy in per_seed.items()}


def by_metric(records, label, metric):
    (record,) = [r for r in records if r.label == label and r.metric == metric]
    return record


# --- pareto_front ---------------------------------------------------------------------------


def test_front_drops_dominated_points_and_orders_by_x():
    # (1, 1) is dominated by (2, 2); input order 3, 0, 1, 2 by x -> indices sorted by x
    assert pareto_front([[3.0, 0.0], [0.0, 3.0], [1.0, 1.0], [2.0, 2.0]]).tolist() == [1, 3, 0]


def test_front_ties_duplicates_kept_equal_x_worse_y_dropped():
    # two equal points do not dominate each other; (0, 1) is dominated by (1, 2)
    assert pareto_front([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]]).tolist() == [0, 1]
    # equal reward, lower diversity: (1, 2) is dominated by (1, 3)
    assert pareto_front([[1.0, 2.0], [1.0, 3.0]]).tolist() == [1]
    # a single point is its own front
    assert pareto_front([[5.0, 5.0]]).tolist() == [0]


def test_front_with_a_minimized_coordinate():
    # (reward ↑, w2 ↓): (1, 0.5) is dominated by (2, 0.4) (more reward, less W2); the base (0, 0) stays
    points = [[0.0, 0.0], [1.0, 0.5], [2.0, 0.4], [3.0, 1.0]]
    assert pareto_front(points, maximize=(True, False)).tolist() == [0, 2, 3]
    # read as both-maximized, (3, 1.0) dominates everything
    assert pareto_front(points).tolist() == [3]


# --- front_value_at -------------------------------------------------------------------------


def test_value_on_vertices_and_edges():
    assert [front_value_at(FRONT, x) for x in (0.0, 2.0, 4.0)] == [4.0, 2.0, 1.0]  # vertices, exact
    assert front_value_at(FRONT, 1.0) == pytest.approx(3.0)  # 4 − 1
    assert front_value_at(FRONT, 3.0) == pytest.approx(1.5)  # 3 − 3/2
    assert front_value_at(FRONT[::-1], 3.0) == pytest.approx(1.5)  # order of the input does not matter


def test_value_out_of_range_is_nan():
    assert math.isnan(front_value_at(FRONT, -0.1)) and math.isnan(front_value_at(FRONT, 4.1))


def test_single_point_front_has_a_value_at_its_own_x_only():
    assert front_value_at([[1.0, 2.0]], 1.0) == 2.0
    assert math.isnan(front_value_at([[1.0, 2.0]], 1.0001))


def test_value_with_duplicate_points_and_refusal_of_two_y_at_one_x():
    assert front_value_at([[0.0, 4.0], [2.0, 2.0], [2.0, 2.0]], 1.0) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match=r"not a front: x = 2.0 has two y values, 2.0 and 3.0"):
        front_value_at([[2.0, 2.0], [2.0, 3.0]], 2.0)


# --- front_deltas (one seed) ----------------------------------------------------------------


def test_deltas_beyond_on_behind():
    points = [
        [2.0, 3.0],  # beyond: ΔD = 3 − 2 = 1; ΔR = 2 − x(3) = 2 − (4 − 3) = 1
        [2.0, 2.0],  # on a vertex: 0, 0
        [3.0, 1.5],  # on an edge: ΔD = 1.5 − 1.5 = 0; ΔR = 3 − (6 − 2·1.5) = 0
        [1.0, 2.0],  # behind: ΔD = 2 − 3 = −1; ΔR = 1 − x(2) = 1 − 2 = −1
    ]
    deltas = front_deltas(points, FRONT)  # columns: [ΔR at equal D, ΔD at equal R]
    np.testing.assert_allclose(deltas, [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [-1.0, -1.0]], atol=1e-12)


def test_deltas_out_of_range():
    deltas = front_deltas([[5.0, 1.5], [-1.0, 3.0], [5.0, 0.5]], FRONT)
    # reward 5 above every baseline point: ΔD undefined; at D = 1.5 the front has x = 6 − 3 = 3 -> ΔR = 2
    assert math.isnan(deltas[0, 1]) and deltas[0, 0] == pytest.approx(2.0)
    # reward −1 below the base model: ΔD undefined; at D = 3 the front has x = 1 -> ΔR = −2
    assert math.isnan(deltas[1, 1]) and deltas[1, 0] == pytest.approx(-2.0)
    # reward 5 and diversity 0.5 (below the front's least diversity 1): both undefined
    assert np.isnan(deltas[2]).all()


def test_deltas_against_baseline_with_ties():
    # the duplicate (2, 2) and the dominated (2, 1.5) (equal reward) change nothing: same as FRONT
    baseline = [[0.0, 4.0], [2.0, 2.0], [2.0, 2.0], [2.0, 1.5], [4.0, 1.0]]
    np.testing.assert_allclose(front_deltas([[2.0, 2.5]], baseline), [[0.5, 0.5]])  # ΔD = 0.5; ΔR = 2 − (4 − 2.5)


def test_deltas_single_point_baseline():
    deltas = front_deltas([[2.0, 3.0], [3.0, 2.0], [3.0, 3.0]], [[2.0, 2.0]])
    # (2, 3): same reward -> ΔD = 1; diversity 3 ≠ 2 -> ΔR undefined
    assert deltas[0, 1] == 1.0 and math.isnan(deltas[0, 0])
    # (3, 2): same diversity -> ΔR = 1; reward 3 ≠ 2 -> ΔD undefined
    assert deltas[1, 0] == 1.0 and math.isnan(deltas[1, 1])
    assert np.isnan(deltas[2]).all()


def test_divergence_sign_positive_means_less_divergence():
    # (reward ↑, w2 ↓) front: base (0, 0), (2, 0.2), (4, 0.6); w2 = 0.1·r on [0, 2], 0.2·r − 0.2 on [2, 4]
    baseline = [[0.0, 0.0], [2.0, 0.2], [4.0, 0.6]]
    deltas = front_deltas([[2.0, 0.1], [2.0, 0.4]], baseline, maximize=(True, False))
    # (2, 0.1): Δw2 = front 0.2 − 0.1 = +0.1 (better); at w2 = 0.1 the front has reward 1 -> ΔR = +1
    # (2, 0.4): Δw2 = 0.2 − 0.4 = −0.2 (worse); at w2 = 0.4 the front has reward 3 -> ΔR = −1
    np.testing.assert_allclose(deltas, [[1.0, 0.1], [-1.0, -0.2]], atol=1e-12)


# --- verdict --------------------------------------------------------------------------------


def test_verdict_against_the_t_interval():
    # mean 0.4, std 0.1, SE 0.1/√3 = 0.0577; t(0.975, 2 df) = 4.303 -> bar 0.248 < 0.4
    assert verdict([0.3, 0.4, 0.5]) == "beyond"
    assert verdict([-0.3, -0.4, -0.5]) == "behind"
    # mean 0.133, std 0.473, SE 0.273 -> 0.133 < 1.17
    assert verdict([0.3, -0.4, 0.5]) == "on"
    # mean 0.4, std 0.2, SE 0.1155: beyond 2 SE (0.231) but not the t bar 0.497: the case 2 SE got wrong at 3 seeds
    assert verdict([0.2, 0.4, 0.6]) == "on" and verdict([0.2, 0.4, 0.6], critical=2.0) == "beyond"
    # two seeds: t(0.975, 1 df) = 12.706. [1, 1.01]: mean 1.005, SE 0.005 -> bar 0.0635: beyond; [3, 1]: 2 < 12.7
    assert verdict([1.0, 1.01]) == "beyond" and verdict([3.0, 1.0]) == "on"
    # a 90 % interval is narrower: t(0.95, 2 df) = 2.920 -> [0.2, 0.4, 0.6]'s bar 0.337 < 0.4
    assert verdict([0.2, 0.4, 0.6], level=0.90) == "beyond"
    # SE 0: a constant positive Δ is beyond, a constant zero is on, and rounding noise is on
    assert verdict([0.1, 0.1]) == "beyond" and verdict([0.0, 0.0]) == "on" and verdict([1e-16] * 3) == "on"


def test_a_mean_equal_to_its_bar_up_to_rounding_is_on():
    # [0.1, 0.3]: mean 0.2, std 0.1414, SE 0.1 -> 2·SE = 0.19999999999999998 in floats, one ulp below the mean;
    # the rule before compared with a bare ">" and said beyond
    assert 2 * float(np.std([0.1, 0.3], ddof=1)) / math.sqrt(2) < 0.2
    assert verdict([0.1, 0.3], critical=2.0) == "on" and verdict([-0.1, -0.3], critical=2.0) == "on"
    # [3, 1]: mean 2 = 2·SE in exact arithmetic too; [3, 1.1]: 2.05 > 2·0.95 by far more than rounding
    assert verdict([3.0, 1.0], critical=2.0) == "on" and verdict([3.0, 1.1], critical=2.0) == "beyond"


def test_t_distribution_matches_tables():
    # tabulated two-sided 95 % critical values (any statistics text): df 1, 2, 4, 9, 29
    for df, expected in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    # closed forms: df 1 is Cauchy, F(t) = 1/2 + atan(t)/π; df 2: F(t) = 1/2 + t / (2√(2 + t²))
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-14)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-14)
    # 3 seeds at 2 SE: P(T < 2) with 2 df = 0.908, the "about 91 % one-sided" of the rule before
    assert student_t_cdf(2.0, 2) == pytest.approx(0.9082, abs=1e-4)
    assert critical_value(3) == t_quantile(0.975, 2) and t_quantile(0.025, 3) == -t_quantile(0.975, 3)
    # large df approaches the normal: z(0.975) = 1.95996
    assert t_quantile(0.975, 2000) == pytest.approx(1.95996, abs=2e-3)
    with pytest.raises(ConfigError, match="df"):
        student_t_cdf(1.0, 0)
    with pytest.raises(ConfigError, match="level"):
        critical_value(3, level=1.0)


def test_verdict_out_of_range_unless_strict_majority_in_range():
    assert verdict([0.1, NAN, NAN]) == "out of range"  # 1 of 3 in range
    assert verdict([0.1, NAN]) == "out of range"  # 1 of 2: not a strict majority
    # 2 of 3 in range: mean 0.15, std 0.0707, SE 0.05 -> 0.15 < 12.706·0.05 = 0.635: on; 2 SE = 0.1: beyond
    assert verdict([NAN, 0.1, 0.2]) == "on" and verdict([NAN, 0.1, 0.2], critical=2.0) == "beyond"
    assert verdict([NAN, 1.0, 1.01]) == "beyond"  # the t bar of the 2 in range, as above


def test_verdict_single_seed_uses_the_sign_and_says_so():
    assert verdict([0.2]) == "beyond (1 seed)"
    assert verdict([-0.2]) == "behind (1 seed)"
    assert verdict([0.0]) == "on (1 seed)" and verdict([1e-12]) == "on (1 seed)"
    assert verdict([NAN]) == "out of range"


def test_summary_of_one_seed_has_no_std_or_se():
    record = summarize_deltas({7: 0.2}, label="adrpo", against="orw", metric="diversity", at="reward")
    assert (record.delta_mean, record.n_seeds, record.n_in_range, record.verdict) == (0.2, 1, 1, "beyond (1 seed)")
    assert math.isnan(record.delta_std) and math.isnan(record.delta_se)
    assert record.to_dict()["delta_se"] is None


# --- compare_to_front (paired by seed) ------------------------------------------------------


def two_seed_setup():
    # seed 0 front: base (0, 4), (2, 2), (4, 1) = FRONT
    # seed 1 front: base (0, 6), (2, 2), (4, 1); first edge y = 6 − 2x, i.e. x = (6 − y)/2
    baseline = family({"a1": {0: (2.0, 2.0), 1: (2.0, 2.0)}, "a2": {0: (4.0, 1.0), 1: (4.0, 1.0)}})
    base = runs({0: (0.0, 4.0), 1: (0.0, 6.0)})
    method = family({"adrpo": {0: (2.0, 3.0), 1: (1.0, 4.5)}, "weak": {0: (1.0, 2.0), 1: (1.0, 2.0)}})
    return method, baseline, base


def test_paired_deltas_use_each_seeds_own_front():
    method, baseline, base = two_seed_setup()
    records = compare_to_front(method, baseline, base=base, against="ORW-CFM-W2", critical=2.0)  # the 2-SE bar
    assert [(r.label, r.metric, r.at) for r in records] == [
        ("adrpo", "diversity", "reward"), ("adrpo", "reward", "diversity"),
        ("weak", "diversity", "reward"), ("weak", "reward", "diversity"),
    ]
    d = by_metric(records, "adrpo", "diversity")
    # seed 0: 3 − 2 = 1; seed 1: 4.5 − (6 − 2·1) = 0.5. mean 0.75, std 0.5/√2 = 0.354, SE 0.25 -> 0.75 > 0.5
    assert d.per_seed == pytest.approx({0: 1.0, 1: 0.5})
    assert (d.delta_mean, d.delta_std, d.delta_se) == pytest.approx((0.75, 0.5 / math.sqrt(2), 0.25))
    assert (d.verdict, d.n_seeds, d.n_in_range, d.against) == ("beyond", 2, 2, "ORW-CFM-W2")
    r = by_metric(records, "adrpo", "reward")
    # seed 0: 2 − (4 − 3) = 1; seed 1: 1 − (6 − 4.5)/2 = 0.25. mean 0.625, SE 0.75/2 = 0.375 -> 0.625 < 0.75
    assert r.per_seed == pytest.approx({0: 1.0, 1: 0.25})
    assert (r.delta_mean, r.delta_se, r.verdict) == pytest.approx((0.625, 0.375, "on"))
    w = by_metric(records, "weak", "diversity")
    # seed 0: 2 − 3 = −1; seed 1: 2 − 4 = −2. mean −1.5, SE 0.5 -> −1.5 < −1
    assert w.per_seed == pytest.approx({0: -1.0, 1: -2.0}) and w.verdict == "behind"


def test_without_the_base_model_the_front_is_shorter():
    method, baseline, _ = two_seed_setup()
    records = compare_to_front(method, baseline, base=None)
    # front (2, 2), (4, 1) on both seeds: reward 1 and diversity 3 or 4.5 fall outside it
    d = by_metric(records, "adrpo", "diversity")
    assert d.per_seed[0] == pytest.approx(1.0) and math.isnan(d.per_seed[1])
    assert (d.n_in_range, d.verdict, d.delta_mean) == (1, "out of range", 1.0)
    r = by_metric(records, "adrpo", "reward")
    assert r.n_in_range == 0 and r.verdict == "out of range" and math.isnan(r.delta_mean)


def test_majority_of_seeds_out_of_range():
    # front per seed: base (0, 4), (2, 2). The method's reward exceeds 2 on seeds 1 and 2.
    baseline = family({"b": {s: (2.0, 2.0) for s in range(3)}})
    base = runs({s: (0.0, 4.0) for s in range(3)})
    method = family({"adrpo": {0: (1.0, 3.5), 1: (3.0, 3.5), 2: (3.0, 3.5)}})
    records = compare_to_front(method, baseline, base=base, critical=2.0)
    d = by_metric(records, "adrpo", "diversity")
    # seed 0: 3.5 − 3 = 0.5; seeds 1, 2: undefined -> 1 of 3 in range
    assert d.n_in_range == 1 and d.verdict == "out of range" and d.delta_mean == pytest.approx(0.5)
    r = by_metric(records, "adrpo", "reward")
    # at D = 3.5 the front has x = 0.5: 0.5, 2.5, 2.5; mean 1.833, std 1.155, SE 0.667 -> 1.833 > 1.333
    assert r.per_seed == pytest.approx({0: 0.5, 1: 2.5, 2: 2.5})
    assert r.verdict == "beyond" and r.delta_se == pytest.approx(2 / 3)
    # at the default 95 % t-interval the bar is 4.303·0.667 = 2.87 > 1.833: on
    assert by_metric(compare_to_front(method, baseline, base=base), "adrpo", "reward").verdict == "on"


def test_divergence_pair_single_seed_and_json():
    names = ("reward", "w2")
    baseline = family({"beta=1": {0: (2.0, 0.2)}, "beta=0.1": {0: (4.0, 0.6)}}, names)
    base = runs({0: (0.0, 0.0)}, names)
    method = family({"adrpo": {0: (2.0, 0.1)}}, names)
    records = compare_to_front(method, baseline, base=base, x="reward", y="w2", maximize=(True, False))
    w2, reward = by_metric(records, "adrpo", "w2"), by_metric(records, "adrpo", "reward")
    # same numbers as test_divergence_sign_positive_means_less_divergence: Δw2 = +0.1, ΔR = +1
    assert w2.delta_mean == pytest.approx(0.1) and w2.verdict == "beyond (1 seed)" and w2.at == "reward"
    assert reward.delta_mean == pytest.approx(1.0) and reward.verdict == "beyond (1 seed)"
    payload = json.loads(json.dumps(w2.to_dict(), allow_nan=False))
    assert payload["delta_std"] is None and payload["per_seed"] == {"0": pytest.approx(0.1)}
    with pytest.raises(AttributeError):
        w2.verdict = "on"  # frozen


# --- hypervolume ----------------------------------------------------------------------------


def test_hypervolume_of_a_staircase():
    stairs = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    # strips from the right: 3·1 + 2·(2 − 1) + 1·(3 − 2) = 6
    assert hypervolume_2d(stairs, reference=(0.0, 0.0)) == 6.0
    # a dominated point, a duplicate and points on or beyond the reference's edges add nothing
    assert hypervolume_2d([*stairs, [1.0, 1.0], [2.0, 2.0], [0.0, 5.0], [4.0, -1.0]], reference=(0.0, 0.0)) == 6.0
    # reference (0.5, 0.5): 2.5·0.5 + 1.5·1 + 0.5·1 = 3.25
    assert hypervolume_2d(stairs, reference=(0.5, 0.5)) == pytest.approx(3.25)


def test_hypervolume_with_a_minimized_divergence():
    # (reward ↑, w2 ↓), reference (0, 1.0) above every W2: w2 ∈ [0.5, 1] reaches reward 2 -> 2·0.5;
    # w2 ∈ [0.2, 0.5] reaches reward 1 -> 1·0.3; total 1.3
    assert hypervolume_2d([[1.0, 0.2], [2.0, 0.5]], reference=(0.0, 1.0), maximize=(True, False)) == pytest.approx(1.3)


def test_reference_point_is_the_worst_corner():
    a = family({"p": {0: (1.0, 0.3), 1: (2.0, 0.9)}}, ("reward", "w2"))
    b = family({"q": {0: (0.5, 0.1)}}, ("reward", "w2"))
    base = runs({0: (0.2, 0.0)}, ("reward", "w2"))
    assert reference_point([a, b], base=base, x="reward", y="w2", maximize=(True, False)) == (0.2, 0.9)
    assert reference_point([a, b], base=None, x="reward", y="w2") == (0.5, 0.1)  # both maximized: minima


def test_family_hypervolume_per_seed_and_bootstrap():
    base = runs({s: (1.0, 3.0) for s in range(3)})
    fam = family({"a": {0: (2.0, 2.0), 1: (2.0, 2.0), 2: (2.0, 2.5)}, "b": {0: (3.0, 1.0), 1: (1.5, 1.0), 2: (3.0, 1.0)}})
    hv = family_hypervolume(fam, name="ORW", base=base, reference=(0.0, 0.0), n_boot=500, rng_seed=3)
    # seed 0: the staircase = 6; seed 1: (1.5, 1) is dominated by (2, 2): 2·2 + 1·(3 − 2) = 5;
    # seed 2: 3·1 + 2·(2.5 − 1) + 1·(3 − 2.5) = 6.5. mean 17.5/3, std √(0.5833) = 0.764
    assert hv.per_seed == pytest.approx({0: 6.0, 1: 5.0, 2: 6.5})
    assert hv.mean == pytest.approx(17.5 / 3) and hv.std == pytest.approx(math.sqrt(0.175 / 0.3))
    assert 5.0 <= hv.low <= hv.mean <= hv.high <= 6.5
    again = family_hypervolume(fam, name="ORW", base=base, reference=(0.0, 0.0), n_boot=500, rng_seed=3)
    assert again == hv and isinstance(hv, Hypervolume)
    assert json.loads(json.dumps(hv.to_dict(), allow_nan=False))["reference"] == [0.0, 0.0]


def test_bootstrap_interval_equals_a_hand_computation():
    # default_rng(0).integers(0, 3, size=(4, 3)) draws the rows [2,1,1], [0,0,0], [0,0,0], [2,1,2]
    assert np.random.default_rng(0).integers(0, 3, size=(4, 3)).tolist() == [[2, 1, 1], [0, 0, 0], [0, 0, 0], [2, 1, 2]]
    # of the values [1, 2, 4]: resample means (4+2+2)/3 = 8/3, 1, 1, (4+2+4)/3 = 10/3; sorted 1, 1, 8/3, 10/3.
    # Linear quantiles at positions q·(4 − 1): q = 0.25 -> 0.75, between 1 and 1 = 1; q = 0.75 -> 2.25, a quarter
    # of the way from 8/3 to 10/3 = 17/6. Raw-value quantiles would give 1.5 and 3: not what is returned
    low, high = bootstrap_ci([1.0, 2.0, 4.0], n_boot=4, level=0.5, rng_seed=0)
    assert low == pytest.approx(1.0, abs=1e-12) and high == pytest.approx(17 / 6, abs=1e-12)
    # the default 1000 resamples of 1..5 for seed 0, pinned (printed once; numpy's default_rng stream is stable)
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0], rng_seed=0) == pytest.approx((1.8, 4.2), abs=1e-12)
    assert bootstrap_ci([4.0]) == (4.0, 4.0)  # one seed: a zero-width interval


# --- validation -----------------------------------------------------------------------------


def test_empty_and_malformed_point_sets_are_refused():
    with pytest.raises(ConfigError, match="points is empty"):
        pareto_front([])
    with pytest.raises(ConfigError, match=r"front_xy is empty"):
        front_value_at(np.zeros((0, 2)), 1.0)
    with pytest.raises(ConfigError, match=r"must have shape \(P, 2\), got \(2, 3\)"):
        pareto_front([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ConfigError, match=r"non-finite value in row 1: \[1.0, nan\]"):
        front_deltas([[1.0, 1.0]], [[0.0, 4.0], [1.0, NAN]])
    with pytest.raises(ConfigError, match="x must be a finite number"):
        front_value_at(FRONT, NAN)
    with pytest.raises(ConfigError, match="maximize must be two booleans"):
        pareto_front(FRONT, maximize=(True,))
    with pytest.raises(ConfigError, match="reference must be two finite numbers"):
        hypervolume_2d(FRONT, reference=(0.0, NAN))
    with pytest.raises(ConfigError, match="non-empty"):
        verdict([])


def test_family_inputs_are_checked_and_named():
    method, baseline, base = two_seed_setup()
    with pytest.raises(ConfigError, match="ORW has no operating points"):
        compare_to_front(method, {}, base=base, against="ORW")
    with pytest.raises(ConfigError, match="method point 'adrpo' has no seeds"):
        compare_to_front({"adrpo": {}}, baseline, base=base)
    short = {**baseline, "a2": {0: baseline["a2"][0]}}
    with pytest.raises(ConfigError, match=r"mismatched seeds: ORW point 'a2' lacks seed\(s\) \[1\]"):
        compare_to_front(method, short, base=base, against="ORW")
    with pytest.raises(ConfigError, match=r"the base model lacks seed\(s\) \[1\]"):
        compare_to_front(method, baseline, base={0: base[0]})
    bad = {**baseline, "a1": {0: {"reward": 2.0, "diversity": NAN}, 1: baseline["a1"][1]}}
    with pytest.raises(ConfigError, match=r"ORW point 'a1', seed 0: diversity = nan is not finite"):
        compare_to_front(method, bad, base=base, against="ORW")
    with pytest.raises(ConfigError, match=r"seed 0: no metric 'w2'"):
        compare_to_front(method, baseline, base=base, y="w2")
    with pytest.raises(ConfigError, match="two different metrics"):
        compare_to_front(method, baseline, base=base, x="reward", y="reward")
    with pytest.raises(ConfigError, match="n_boot must be an int >= 1"):
        family_hypervolume(baseline, name="ORW", base=base, reference=(0.0, 0.0), n_boot=0)
    with pytest.raises(ConfigError, match=r"level must be in \(0, 1\)"):
        bootstrap_ci([1.0, 2.0], level=1.0)
