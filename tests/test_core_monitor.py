"""The collapse detector on synthetic metric streams: each rule fires at the step and with the
threshold derived in the comments, healthy streams and missing metrics raise nothing, each rule
fires once; the policy wrapper warns, records alarms.jsonl, asks a trainer to stop and replays
a resumed run's history silently."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from adrpo.core.monitor import Alarm, CollapseDetector, CollapseMonitor, Thresholds, detect, read_alarms
from adrpo.errors import ConfigError


def flow_rows(reward, diversity, w2=None, start=1):
    """Flow training rows (unprefixed keys) at steps start, start + 1, ..."""
    w2 = w2 or [0.0] * len(reward)
    return [{"step": start + i, "reward_mean": r, "diversity": d, "w2": w, "loss": 0.1}
            for i, (r, d, w) in enumerate(zip(reward, diversity, w2))]


def only(alarms: list[Alarm]) -> Alarm:
    assert len(alarms) == 1, alarms
    return alarms[0]


# --- healthy streams ------------------------------------------------------------------------


def test_healthy_flow_stream_raises_nothing():
    # reward up 0.65 -> 0.70, diversity down to 0.9 x base, W2 0.04, no negative coefficient:
    # ADRPO-FM's digits numbers; every rule stays quiet.
    rows = flow_rows([0.65, 0.67, 0.69, 0.70], [4.8, 4.6, 4.4, 4.3], [0.0, 0.02, 0.03, 0.04])
    for row in rows:
        row.update(coef_mean=1.0, frac_negative=0.0)
    rows.insert(0, {"step": 0, "eval/reward": 0.65, "eval/diversity": 4.8, "eval/w2": 0.0})
    assert detect(rows) == []


def test_healthy_trl_stream_raises_nothing():
    # the arithmetic miniature after 400 steps: entropy 0.75 x base, KL 0.14, 30 % zero-std groups
    rows = [{"step": 10 * (i + 1), "reward": r, "entropy": e, "kl": k, "frac_reward_zero_std": z, "adrpo/frac_negative": 0.0}
            for i, (r, e, k, z) in enumerate(zip([0.22, 0.3, 0.38], [0.70, 0.6, 0.525], [0.0, 0.08, 0.14], [0.3, 0.35, 0.3]))]
    assert detect(rows) == []


# --- each rule ------------------------------------------------------------------------------


def test_diversity_collapse_fires_when_diversity_halves_while_reward_rises():
    # base diversity 4.0 -> threshold 0.5 * 4.0 = 2.0; 1.9 at step 5 is the first value below it,
    # and the reward there (0.7) is above its base (0.5)
    rows = flow_rows([0.5, 0.55, 0.6, 0.65, 0.7, 0.75], [4.0, 3.5, 3.0, 2.5, 1.9, 1.5])
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step) == ("diversity_collapse", "diversity", 5)
    assert alarm.value == 1.9 and alarm.threshold == pytest.approx(2.0)
    assert "diversity = 1.9 < 0.5 × base 4 = 2" in alarm.message and "reward_mean = 0.7 > base 0.5" in alarm.message


def test_diversity_collapse_needs_the_reward_above_its_base():
    # diversity is below 2.0 from step 3 on, but the reward only climbs above its base 0.5 at step 5
    rows = flow_rows([0.5, 0.45, 0.4, 0.45, 0.52], [4.0, 2.5, 1.8, 1.7, 1.6])
    alarm = only(detect(rows))
    assert (alarm.step, alarm.value) == (5, 1.6)


def test_diversity_collapse_on_eval_rows_uses_the_step_zero_base():
    # eval base 4.8 at step 0 -> threshold 2.4; 3.0 at step 50 is above, 2.3 at step 100 below
    rows = [{"step": s, "eval/reward": r, "eval/diversity": d} for s, r, d in ((0, 0.65, 4.8), (50, 0.7, 3.0), (100, 0.8, 2.3))]
    alarm = only(detect(rows))
    assert (alarm.metric, alarm.step, alarm.value) == ("eval/diversity", 100, 2.3)
    assert alarm.threshold == pytest.approx(2.4)


def test_entropy_collapse_on_trl_keys():
    # base entropy 0.7 -> threshold 0.35: 0.5 at step 10 is above, 0.34 at step 20 below; reward 0.35 > 0.2
    rows = [{"step": 1, "reward": 0.2, "entropy": 0.7}, {"step": 10, "reward": 0.3, "entropy": 0.5},
            {"step": 20, "reward": 0.35, "entropy": 0.34}]
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step, alarm.value) == ("entropy_collapse", "entropy", 20, 0.34)
    assert alarm.threshold == pytest.approx(0.35)


def test_w2_bound_fires_at_the_first_row_past_it():
    rows = flow_rows([0.5] * 5, [4.0] * 5, [0.0, 0.2, 0.45, 0.51, 0.9])
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step, alarm.value, alarm.threshold) == ("w2_bound", "w2", 4, 0.51, 0.5)
    assert alarm.message == "w2_bound at step 4: w2 = 0.51 > w2_max = 0.5"


def test_w2_bound_reads_the_divergence_to_the_base_under_a_moving_reference():
    # the moving reference follows the policy: w2 stays small while w2_base walks past the bound
    w2, w2_base = [0.0, 0.01, 0.02, 0.01, 0.02], [0.0, 0.1, 0.3, 0.6, 11.5]
    rows = [{**row, "w2_base": b} for row, b in zip(flow_rows([0.5] * 5, [4.0] * 5, w2), w2_base)]
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step, alarm.value) == ("w2_bound", "w2_base", 4, 0.6)
    assert alarm.message == "w2_bound at step 4: w2_base = 0.6 > w2_max = 0.5"
    # w2 past the bound does not fire where the row has w2_base: that is the drift bounded
    assert detect([{"step": 1, "w2": 0.9, "w2_base": 0.1}]) == []
    evals = [{"step": 0, "eval/w2": 0.0, "eval/w2_base": 0.0}, {"step": 50, "eval/w2": 0.05, "eval/w2_base": 0.7}]
    assert only(detect(evals)).metric == "eval/w2_base"


@pytest.mark.parametrize("plain, base, rows_needed", [("kl", "kl_base", 3), ("eval_kl", "eval_kl_base", 1)])
def test_kl_bound_reads_kl_base_when_a_row_has_it(plain, base, rows_needed):
    rows = [{"step": s, plain: 0.01, base: k} for s, k in ((1, 0.0), (2, 0.6), (3, 0.7), (4, 0.8))]
    alarm = only(detect(rows))
    assert (alarm.metric, alarm.step) == (base, 1 + rows_needed)
    assert detect([{"step": s, plain: 0.9, base: 0.1} for s in (1, 2, 3, 4)]) == []


def test_kl_bound_on_trl_eval_keys_fires_on_one_row():
    # a held-out evaluation averages many prompts: no patience (the audio QA miniature's GRPO β = 0, seed 2)
    rows = [{"step": s, "eval_kl": k, "eval_reward": 0.3} for s, k in ((0, 0.0), (25, 2.08), (50, 0.21), (75, 0.03))]
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step, alarm.value, alarm.threshold) == ("kl_bound", "eval_kl", 25, 2.08, 0.5)
    assert alarm.message == "kl_bound at step 25: eval_kl = 2.08 > kl_max = 0.5"


def test_kl_bound_on_the_training_kl_needs_kl_rows_rows():
    rows = [{"step": s, "kl": k, "reward": 0.3} for s, k in ((1, 0.0), (2, 0.6), (3, 0.7), (4, 0.55), (5, 0.8))]
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step, alarm.value) == ("kl_bound", "kl", 4, 0.55)
    assert alarm.message == "kl_bound at step 4: kl = 0.55 > kl_max = 0.5 in 3 consecutive logged rows"


def test_kl_bound_ignores_a_spike_of_fewer_than_kl_rows_rows():
    # the audio QA miniature's healthy runs: one batch's KL crosses the bound early, then falls back
    kl = [0.0, 0.1, 0.68, 0.72, 0.05, 0.04, 0.6, 0.03]
    rows = [{"step": s, "reward": 1.0, "kl": k} for s, k in enumerate(kl, start=1)]
    assert detect(rows) == []
    assert [a.step for a in detect(rows, Thresholds(kl_rows=2))] == [4]
    assert [a.step for a in detect(rows, Thresholds(kl_rows=1))] == [3]  # the bound alone


def test_zero_std_saturation_needs_consecutive_rows():
    # > 0.9 at steps 2, 3 (broken at 4), then 5, 6, 7: the third consecutive row is step 7;
    # the eval row between 5 and 6 lacks the metric and neither counts nor breaks the streak
    values = {1: 0.2, 2: 0.95, 3: 0.95, 4: 0.5, 5: 0.92, 6: 0.93, 7: 0.91, 8: 0.99}
    rows = [{"step": s, "frac_reward_zero_std": v} for s, v in values.items()]
    rows.insert(5, {"step": 5, "eval_loss": 1.0})
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step, alarm.value, alarm.threshold) == ("zero_std_saturation", "frac_reward_zero_std", 7, 0.91, 0.9)
    assert "in 3 consecutive logged rows" in alarm.message


@pytest.mark.parametrize("key", ["frac_negative", "adrpo/frac_negative"])
def test_negative_coefficient_saturation(key):
    # 0.3 > 0.25 from step 2: the third such row is step 4
    rows = [{"step": s, key: v} for s, v in ((1, 0.0), (2, 0.3), (3, 0.3), (4, 0.3), (5, 0.4))]
    alarm = only(detect(rows))
    assert (alarm.rule, alarm.metric, alarm.step, alarm.threshold) == ("negative_saturation", key, 4, 0.25)


# --- once per run, missing metrics, thresholds ----------------------------------------------


def test_each_rule_fires_once_and_rules_fire_independently():
    detector = CollapseDetector()
    first = detector.update({"step": 1, "reward_mean": 0.5, "diversity": 4.0, "w2": 0.6})
    assert [a.rule for a in first] == ["w2_bound"]
    for step in range(2, 6):  # W2 stays past the bound: no new W2 alarm
        assert detector.update({"step": step, "reward_mean": 0.5, "diversity": 4.0, "w2": 0.7 + step}) == []
    second = detector.update({"step": 6, "reward_mean": 0.6, "diversity": 1.0, "w2": 9.0})
    assert [a.rule for a in second] == ["diversity_collapse"]
    assert detector.update({"step": 7, "reward_mean": 0.7, "diversity": 0.5, "w2": 9.0}) == []
    assert [(a.rule, a.step) for a in detector.alarms] == [("w2_bound", 1), ("diversity_collapse", 6)]


def test_missing_and_non_numeric_metrics_disable_their_rules():
    rows = [
        {"step": 1, "loss": 0.3, "learning_rate": 1e-3},
        {"step": 2, "reward": None, "entropy": float("nan"), "kl": None, "note": "text", "flag": True},
        {"step": 3, "diversity": 4.0}, {"step": 4, "diversity": 0.1},  # no reward: the collapse rule cannot tell
        {"step": 5, "reward_mean": 0.9},  # and the reward alone says nothing either
    ]
    assert detect(rows) == []
    with pytest.raises(ValueError, match="needs a 'step'"):
        CollapseDetector().update({"reward": 1.0})


def test_thresholds_move_and_switch_off_rules():
    rows = flow_rows([0.5, 0.55, 0.6, 0.65], [4.0, 3.5, 3.0, 2.5], [0.0, 0.6, 0.7, 0.8])
    # fraction 0.8 -> threshold 3.2: 3.0 at step 3 is the first below; W2 switched off
    alarm = only(detect(rows, Thresholds(diversity_fraction=0.8, w2_max=None)))
    assert (alarm.rule, alarm.step, alarm.value) == ("diversity_collapse", 3, 3.0)
    assert alarm.threshold == pytest.approx(3.2)
    assert detect([{"step": s, "frac_negative": 0.3} for s in range(5)], Thresholds(saturation_rows=5)) == [
        Alarm("negative_saturation", "frac_negative", 4, 0.3, 0.25,
              "negative_saturation at step 4: frac_negative = 0.3 > negative_max = 0.25 in 5 consecutive logged rows")]


def test_thresholds_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"diversity_fraction must be in \(0, 1\] or None, got 1.5"):
        Thresholds(diversity_fraction=1.5)
    with pytest.raises(ConfigError, match=r"kl_max must be > 0 or None, got 0"):
        Thresholds(kl_max=0)
    with pytest.raises(ConfigError, match=r"saturation_rows must be an int >= 1, got True"):
        Thresholds(saturation_rows=True)
    with pytest.raises(ConfigError, match=r"kl_rows must be an int >= 1, got 0"):
        Thresholds(kl_rows=0)
    with pytest.raises(ConfigError, match=r"unknown monitor threshold\(s\) \['w2'\]"):
        Thresholds.from_dict({"w2": 1.0})
    with pytest.raises(ConfigError, match=r"w2_max must be a number or None, got 'big'"):
        Thresholds.from_dict({"w2_max": "big"})
    parsed = Thresholds.from_dict({"w2_max": "1e-3", "kl_max": None, "saturation_rows": 4.0, "kl_rows": 2.0})  # YAML 1.1 leaves 1e-3 as text
    assert (parsed.w2_max, parsed.kl_max, parsed.saturation_rows, parsed.kl_rows, parsed.diversity_fraction) == (0.001, None, 4, 2, 0.5)


def test_alarm_round_trips_through_json():
    alarm = only(detect(flow_rows([0.5, 0.5], [4.0, 4.0], [0.0, 0.6])))
    assert Alarm.from_dict(json.loads(json.dumps(alarm.to_dict()))) == alarm
    with pytest.raises(AttributeError):
        alarm.step = 3  # frozen


# --- the policy wrapper ---------------------------------------------------------------------


W2_ROWS = flow_rows([0.5, 0.5, 0.5, 0.5], [4.0] * 4, [0.0, 0.1, 0.6, 0.9])  # W2 past 0.5 at step 3


def test_warn_logs_the_metric_step_and_threshold_and_records_the_alarm(tmp_path, caplog):
    path = tmp_path / "alarms.jsonl"
    monitor = CollapseMonitor(policy="warn", path=path)
    monitor.reset()
    trainer = SimpleNamespace(should_stop=False)
    with caplog.at_level(logging.WARNING, logger="adrpo.monitor"):
        for row in W2_ROWS:
            monitor.on_log(trainer, row)
    (record,) = caplog.records
    assert "w2_bound at step 3: w2 = 0.6 > w2_max = 0.5" in record.getMessage()
    assert "policy warn" in record.getMessage()
    assert trainer.should_stop is False and monitor.stop_requested is False
    assert read_alarms(path) == monitor.alarms and [a.step for a in monitor.alarms] == [3]


def test_stop_asks_the_trainer_to_stop_at_the_first_alarm():
    monitor = CollapseMonitor(policy="stop")
    trainer = SimpleNamespace(should_stop=False)
    for row in W2_ROWS[:2]:
        monitor.on_log(trainer, row)
    assert trainer.should_stop is False
    monitor.on_log(trainer, W2_ROWS[2])
    assert trainer.should_stop is True and monitor.stop_requested is True


def test_reset_replays_a_resumed_history_silently(tmp_path, caplog):
    path = tmp_path / "alarms.jsonl"
    path.write_text("stale line from a run that was restarted\n")
    monitor = CollapseMonitor(policy="stop", path=path)
    with caplog.at_level(logging.WARNING, logger="adrpo.monitor"):
        monitor.on_train_begin(None, W2_ROWS[:3])  # the rows kept up to the checkpoint at step 3
    assert caplog.records == []
    assert [a.step for a in read_alarms(path)] == [3]  # rewritten from the replayed rows
    assert monitor.stop_requested is False  # the restart itself does not stop again
    trainer = SimpleNamespace(should_stop=False)
    monitor.on_log(trainer, W2_ROWS[3])  # W2 still past the bound: the rule has fired already
    assert trainer.should_stop is False and len(read_alarms(path)) == 1


def test_a_fresh_start_leaves_no_alarm_file(tmp_path):
    path = tmp_path / "alarms.jsonl"
    path.write_text(json.dumps(only(detect(W2_ROWS)).to_dict()) + "\n")  # from an earlier run in the same directory
    monitor = CollapseMonitor(path=path)
    monitor.reset()
    assert not path.exists()
    for row in W2_ROWS[:2]:  # no alarm: still no file
        monitor.observe(row)
    assert not path.exists()


def test_policy_must_be_warn_or_stop():
    with pytest.raises(ConfigError, match="'warn' or 'stop'"):
        CollapseMonitor(policy="off")
