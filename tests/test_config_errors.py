"""User mistakes in a YAML config are one-line ConfigErrors naming the field or the file, and the
YAML spellings the README uses (``monitor: off``) mean what they say."""

from __future__ import annotations

import pytest

from adrpo import cli
from adrpo.errors import ConfigError
from adrpo.llm.callbacks import monitor_callback
from adrpo.settings import monitor_policy

# --- monitor: YAML booleans -------------------------------------------------------------------


@pytest.mark.parametrize("text, policy", [("off", "off"), ("no", "off"), ("false", "off"), ("on", "warn"), ("true", "warn"),
                                          ("warn", "warn"), ("stop", "stop"), ("'off'", "off")])
def test_monitor_policy_reads_yaml_booleans(text, policy):
    value = cli.parse_yaml(f"monitor: {text}")["monitor"]
    assert monitor_policy(value) == policy


def test_monitor_policy_refuses_other_values_naming_the_field():
    with pytest.raises(ConfigError, match=r"trainer.monitor must be one of \('off', 'warn', 'stop'\), got 'loud' \(YAML booleans"):
        monitor_policy("loud", field="trainer.monitor")
    with pytest.raises(ConfigError, match=r"monitor must be one of .*, got 0"):
        monitor_policy(0)


def test_recipe_monitor_off_as_yaml_writes_it():
    assert monitor_callback(cli.parse_yaml("monitor: off")["monitor"]) is None
    assert monitor_callback(cli.parse_yaml("monitor: {policy: off}")["monitor"]) is None
    assert monitor_callback(True).monitor.policy == "warn"
    with pytest.raises(ConfigError, match=r"monitor policy must be one of .*, got 'loud'"):
        monitor_callback({"policy": "loud"})
