"""The collapse monitor on real runs: a RAFT run on the tiny digits task drifts from the
reference while its reward climbs and raises an alarm, ADRPO-FM at the paper's defaults raises
none; ``stop`` ends a flow run at the alarm with a checkpoint that ``resume`` continues, and a
TRL run with control.should_save/should_training_stop; configs, recipes and reports carry it.

The digits setting (4 prompts x 8 samples, 4 Euler steps, lr 3e-3) is the smallest in which the
tiny fixture models show reward-driven drift within a second: at the tests' usual lr 1e-3 no
method moves far in a few hundred steps, and at 1e-2 RAFT's reward falls while it drifts.
"""

from __future__ import annotations

import json
import statistics
import warnings
from types import SimpleNamespace

import pytest
import yaml
from datasets import Dataset
from transformers import TrainerControl, TrainerState

from adrpo.core.monitor import CollapseMonitor, Thresholds, read_alarms
from adrpo.errors import ConfigError
from adrpo.experiments.engine import run_experiment
from adrpo.experiments.report import first_alarms, markdown_table, write_report
from adrpo.experiments.spec import ExperimentSpec
from adrpo.flow.checkpointing import list_checkpoints
from adrpo.flow.config import FlowConfig
from adrpo.flow.trainer import FlowTrainer
from adrpo.llm.callbacks import CollapseMonitorCallback, monitor_callback
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.trainer import ADRPOTrainer
from conftest import TINY_SETTINGS, make_config

DIGITS = dict(prompts_per_step=4, group_size=8, sampling_steps=4, learning_rate=3e-3)


def digits_trainer(task, output_dir, callbacks=(), **overrides) -> FlowTrainer:
    config = make_config(output_dir, **{**DIGITS, **overrides})
    return FlowTrainer(config, task.base_model(), task.reward, task.train_prompts, diversity_fn=task.embed, callbacks=callbacks)


def train_rows(rows):
    return [row for row in rows if "reward_mean" in row]


# --- real digits runs -------------------------------------------------------------------------


def test_a_collapsing_raft_run_raises_a_w2_alarm(digits_task, tmp_path):
    trainer = digits_trainer(digits_task, tmp_path, method="raft", num_steps=200)
    rows = trainer.train()
    alarms = read_alarms(tmp_path / "alarms.jsonl")
    assert alarms == [a for c in trainer.callbacks if isinstance(c, CollapseMonitor) for a in c.alarms]
    first = alarms[0]
    # measured here (seed 0, one thread): W2 0.515 at step 71; seeds 1, 2 fire at steps 52 and 46
    assert (first.rule, first.metric, first.threshold) == ("w2_bound", "w2", 0.5)
    assert first.value > 0.5 and 10 < first.step < 200
    train = train_rows(rows)
    # it is reward hacking, not noise: the reward climbs while the policy leaves the reference
    # (about 0.09 -> 0.25 over the 200 steps, W2 past 1 by the end)
    assert statistics.fmean(r["reward_mean"] for r in train[-20:]) > statistics.fmean(r["reward_mean"] for r in train[:20]) + 0.05
    assert max(r["w2"] for r in train) > 2 * first.threshold


def test_adrpo_at_the_paper_defaults_raises_no_alarm(digits_task, tmp_path):
    trainer = digits_trainer(digits_task, tmp_path, method="adrpo", num_steps=200)
    assert (trainer.config.beta0, trainer.config.adv_clip_min, trainer.config.adv_clip_max) == (1.0, -1.0, 1.0)
    rows = trainer.train()
    assert not (tmp_path / "alarms.jsonl").exists()  # written only when there is an alarm
    train = train_rows(rows)
    # measured: W2 peaks at about 0.025 (20x under the bound), diversity never below 0.75 x base
    assert max(r["w2"] for r in train) < 0.1
    assert min(r["diversity"] for r in train) > 0.6 * train[0]["diversity"]
    assert all(r["frac_negative"] == 0.0 for r in train)  # clip ±beta0: the coefficient never goes negative


def test_a_long_raft_run_collapses_diversity_and_stop_ends_it_there(digits_task, tmp_path):
    # With the W2 rule off, RAFT keeps going until its diversity halves while the reward is up
    # (measured: step 608, diversity 0.72 < 0.5 x 1.56, reward 0.54 > base 0.09), and stop ends it.
    trainer = digits_trainer(digits_task, tmp_path, method="raft", num_steps=1000, monitor="stop",
                             monitor_thresholds={"w2_max": None})
    rows = trainer.train()
    (alarm,) = read_alarms(tmp_path / "alarms.jsonl")
    assert alarm.rule == "diversity_collapse" and alarm.metric == "diversity"
    base = train_rows(rows)[0]
    assert alarm.threshold == pytest.approx(0.5 * base["diversity"]) and alarm.value < alarm.threshold
    assert rows[-1]["step"] == alarm.step == trainer.state.step < 1000
    assert rows[-1]["reward_mean"] > 2 * base["reward_mean"]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [f"step-{alarm.step:08d}"]


# --- the stop policy and the callback protocol ------------------------------------------------


def test_stop_saves_the_alarm_step_returns_and_resume_continues(digits_task, tmp_path):
    # W2 is exactly 0 at step 1 (policy == reference) and positive after one update, so a bound
    # of 1e-6 must fire at step 2.
    settings = dict(method="adrpo", num_steps=6, monitor="stop", monitor_thresholds={"w2_max": 1e-6})
    trainer = digits_trainer(digits_task, tmp_path, **settings)
    rows = trainer.train(evaluator=digits_task.evaluate)
    assert trainer.state.step == 2 and rows[-1]["step"] == 2
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    (alarm,) = read_alarms(tmp_path / "alarms.jsonl")
    assert (alarm.rule, alarm.step, alarm.threshold) == ("w2_bound", 2, 1e-6)

    resumed = digits_trainer(digits_task, tmp_path, **settings)
    rows = resumed.train(resume_from_checkpoint=True, evaluator=digits_task.evaluate)
    assert resumed.state.step == 6  # the rule fired before the restart: it does not stop the run again
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert read_alarms(tmp_path / "alarms.jsonl") == [alarm]
    assert "step-00000006" in [p.name for p in list_checkpoints(tmp_path / "checkpoints")]


class Recorder:
    """A FlowCallback that records what it sees and stops the run at ``stop_at``."""

    def __init__(self, stop_at=None):
        self.stop_at, self.begun, self.rows = stop_at, None, []

    def on_train_begin(self, trainer, rows):
        self.begun = rows

    def on_log(self, trainer, row):
        self.rows.append(row)
        if row["step"] == self.stop_at:
            trainer.should_stop = True


def test_callbacks_see_every_logged_row_and_monitor_off_builds_none(digits_task, tmp_path):
    recorder = Recorder(stop_at=3)
    trainer = digits_trainer(digits_task, tmp_path, method="raft", num_steps=5, monitor="off", logging_steps=2)
    trainer.callbacks.append(recorder)
    assert not any(isinstance(c, CollapseMonitor) for c in trainer.callbacks[:-1])
    rows = trainer.train(evaluator=digits_task.evaluate, eval_steps=3)
    assert recorder.begun == [] and recorder.rows == rows  # exactly the metrics.jsonl rows
    assert [row["step"] for row in rows] == [0, 2, 3]  # eval at 0, logged at 2, eval (and stop) at 3
    assert trainer.state.step == 3 and not (tmp_path / "alarms.jsonl").exists()
    # a monitor passed in replaces the default one
    mine = CollapseMonitor(Thresholds(w2_max=1.0))
    other = digits_trainer(digits_task, tmp_path / "other", method="raft", num_steps=1, callbacks=[mine])
    assert [c for c in other.callbacks if isinstance(c, CollapseMonitor)] == [mine]


def test_flow_config_validates_the_monitor_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"monitor must be one of \('off', 'warn', 'stop'\), got 'loud'"):
        make_config(tmp_path, monitor="loud")
    with pytest.raises(ConfigError, match=r"monitor_thresholds: unknown monitor threshold\(s\) \['w2'\]"):
        FlowConfig.from_dict({"monitor_thresholds": {"w2": 1.0}})
    with pytest.raises(ConfigError, match=r"monitor_thresholds: monitor thresholds must be a mapping"):
        FlowConfig.from_dict({"monitor_thresholds": [1.0]})
    config = FlowConfig.from_dict({"monitor": "stop", "monitor_thresholds": {"kl_max": None, "w2_max": "1e-1"}})
    assert config.monitor == "stop" and Thresholds.from_dict(config.monitor_thresholds).w2_max == 0.1
    # `trainer: {monitor: off}` as YAML reads it (false), and true, are the policies they spell
    from adrpo.cli import parse_yaml

    assert FlowConfig.from_dict(parse_yaml("monitor: off")).monitor == "off"
    assert FlowConfig.from_dict({"monitor": True}).monitor == "warn"
    assert FlowConfig().monitor == "warn"  # every run is monitored unless switched off


# --- comparisons and reports ------------------------------------------------------------------


def test_compare_records_alarms_and_the_table_shows_the_first(tmp_path, digits_cache):
    trainer = {"num_steps": 4, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 4, "learning_rate": 1e-3,
               "checkpoint_steps": 0, "report_to": ["none"], "progress_bar": False}
    spec = ExperimentSpec.from_dict({
        "task": "digits", "task_args": {"settings": dict(TINY_SETTINGS), "cache": str(digits_cache), "eval_samples": 2, "eval_sampling_steps": 2},
        "trainer": trainer, "eval": {"steps": 2}, "seeds": [0], "output_dir": str(tmp_path / "out"),
        "methods": [{"label": "ADRPO", "method": "adrpo"},
                    {"label": "RAFT tight", "method": "raft", "monitor": "stop", "monitor_thresholds": {"w2_max": 1e-6}}],
    })
    results = run_experiment(spec)
    adrpo, raft = results["runs"]
    assert adrpo["alarms"] == []
    assert [(a["rule"], a["step"]) for a in raft["alarms"]] == [("w2_bound", 2)]
    assert raft["trajectory"][-1]["step"] == 2  # stopped at the alarm, after that step's evaluation
    paths = write_report(results, tmp_path / "out")
    table = paths["table"].read_text().splitlines()
    assert table[0].endswith("| First alarm |")
    assert next(line for line in table if line.startswith("| RAFT tight |")).endswith("| 2 |")
    assert next(line for line in table if line.startswith("| ADRPO |")).endswith("| — |")
    assert next(line for line in table if line.startswith("| Base |")).endswith("|  |")
    saved = json.loads(paths["json"].read_text())
    assert saved["runs"][1]["alarms"][0]["threshold"] == 1e-6


def test_first_alarm_cells_per_seed():
    runs = [{"label": "A", "seed": s, "alarms": alarms} for s, alarms in
            ((0, [{"step": 40}, {"step": 12}]), (1, []), (2, [{"step": 55}]))]
    runs += [{"label": "B", "seed": s, "alarms": []} for s in range(3)] + [{"label": "C", "seed": 0, "alarms": None}]
    steps = first_alarms({"runs": runs})
    assert steps == {"A": [12, None, 55], "B": [None, None, None], "C": None}
    table = {label: {"reward": [0.5], "diversity": [1.0], "w2": [0.0]} for label in ("Base", "A", "B", "C")}
    lines = markdown_table(table, alarms=steps).splitlines()
    assert [line.rsplit("|", 2)[-2].strip() for line in lines[2:6]] == ["", "12, —, 55", "—", "off"]
    assert "First alarm" not in markdown_table(table)  # unchanged without alarms


# --- TRL --------------------------------------------------------------------------------------


def test_trl_callback_warns_or_stops_through_control(tmp_path):
    rows = [{"reward": 0.2, "kl": 0.0}, {"reward": 0.3, "kl": 0.7}]
    for policy, stops in (("warn", False), ("stop", True)):
        callback, state, control = CollapseMonitorCallback(Thresholds(kl_rows=1), policy=policy), TrainerState(), TrainerControl()
        callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path / policy)), state, control)
        for step, logs in enumerate(rows, start=1):
            state.global_step = step
            callback.on_log(None, state, control, logs=logs)
        assert [(a.rule, a.metric, a.step, a.value) for a in callback.alarms] == [("kl_bound", "kl", 2, 0.7)]
        assert (control.should_save, control.should_training_stop) == (stops, stops)
        assert read_alarms(tmp_path / policy / "alarms.jsonl") == callback.alarms


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    tokenizer = char_tokenizer(list("0123456789+="))
    return save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2), tokenizer,
                                    tmp_path_factory.mktemp("qwen2"))


def digit_sum(completions, **kwargs):
    return [float(sum(int(ch) for ch in c if ch.isdigit())) for c in completions]


def trl_trainer(path, output_dir, callback):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ADRPOConfig(output_dir=str(output_dir), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                           save_strategy="no", disable_tqdm=True, max_steps=5, learning_rate=1e-2, per_device_train_batch_size=8,
                           num_generations=4, max_completion_length=4, logging_steps=1, seed=0)
        dataset = Dataset.from_list([{"prompt": p} for p in ("1+2=", "3+4=", "5+1=", "2+2=")] * 8)
        return ADRPOTrainer(model=str(path), reward_funcs=digit_sum, args=args, train_dataset=dataset, callbacks=[callback])


def test_trl_stop_saves_a_checkpoint_ends_training_and_resume_continues(qwen_path, tmp_path):
    # KL is 0 at step 1 (policy == reference) and positive after the first update: a bound of
    # 1e-9 must fire at the first step that logs a positive KL and end the run there.
    callback = CollapseMonitorCallback(Thresholds(kl_max=1e-9), policy="stop")
    trainer = trl_trainer(qwen_path, tmp_path, callback)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    (alarm,) = callback.alarms
    assert alarm.rule == "kl_bound" and alarm.value > 1e-9
    assert trainer.state.global_step == alarm.step < 5
    assert (tmp_path / f"checkpoint-{alarm.step}" / "trainer_state.json").exists()
    assert read_alarms(tmp_path / "alarms.jsonl") == [alarm]

    again = CollapseMonitorCallback(Thresholds(kl_max=1e-9), policy="stop")
    resumed = trl_trainer(qwen_path, tmp_path, again)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 5  # the replayed history holds the alarm: no second stop
    assert again.alarms == [alarm] and read_alarms(tmp_path / "alarms.jsonl") == [alarm]


def test_recipe_monitor_key(qwen_path, tmp_path):
    assert monitor_callback("off") is None
    assert monitor_callback().monitor.policy == "warn"
    custom = monitor_callback({"policy": "stop", "thresholds": {"kl_max": 2.0}})
    assert custom.monitor.policy == "stop" and custom.monitor.thresholds.kl_max == 2.0
    with pytest.raises(ConfigError, match=r"monitor policy must be one of \('off', 'warn', 'stop'\), got 'loud'"):
        monitor_callback("loud")
    with pytest.raises(ConfigError, match=r"monitor.thresholds: unknown monitor threshold\(s\) \['kl'\]"):
        monitor_callback({"thresholds": {"kl": 1}})
    with pytest.raises(ConfigError, match=r"unknown monitor key\(s\) \['when'\]"):
        monitor_callback({"when": "now"})

    from adrpo.llm.recipe import KEYS, build_trainer

    assert "monitor" in KEYS
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(4)))
    values = yaml.safe_load(f"""
        model_name_or_path: {qwen_path}
        dataset: {{path: {prompts}}}
        rewards: [{{type: math_answer}}]
        args: {{output_dir: {tmp_path / 'out'}, max_steps: 1, per_device_train_batch_size: 4, num_generations: 4,
                max_completion_length: 2, report_to: none, use_cpu: true}}
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = build_trainer(values)
        stopped = build_trainer({**values, "monitor": {"policy": "stop"}})
        off = build_trainer({**values, "monitor": "off"})

    def monitors(trainer):
        return [c for c in trainer.callback_handler.callbacks if isinstance(c, CollapseMonitorCallback)]

    assert [m.monitor.policy for m in monitors(default)] == ["warn"]
    assert [m.monitor.policy for m in monitors(stopped)] == ["stop"]
    assert monitors(off) == []
