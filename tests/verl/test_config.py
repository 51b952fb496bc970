"""ADRPO's settings in verl's config: defaults, errors naming the field at start-up, the version pin, plugin loading."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.workers", reason="verl is not installed here: tests/verl run in their own environment, make verl-test")

import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

from hydra import compose, initialize_config_module  # noqa: E402
from hydra.errors import InstantiationException  # noqa: E402
from verl.utils.config import validate_config  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.utils import losses  # noqa: E402

from adrpo.errors import ConfigError  # noqa: E402
from adrpo.integrations import verl as plugin  # noqa: E402

TARGET = "actor_rollout_ref.actor.policy_loss._target_=adrpo.integrations.verl.ADRPOPolicyLossConfig"
# The least a ppo_trainer config needs to pass verl's validate_config on one device.
BASE_OVERRIDES = [
    "actor_rollout_ref.model.path=unused",
    "trainer.n_gpus_per_node=1",
    "data.train_batch_size=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
]


def start_up(*overrides: str) -> None:
    """verl's own start-up path: compose ppo_trainer with command-line overrides, then validate_config."""
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(config_name="ppo_trainer", overrides=[*BASE_OVERRIDES, *overrides])
    validate_config(config, use_reference_policy=True, use_critic=False)


def test_defaults_follow_kl_loss_coef(actor_config):
    """Unset clip bounds are ∓kl_loss_coef (β0), the scale 1: the paper's rule."""
    settings = plugin.adrpo_settings(actor_config(kl_loss_coef=0.05))
    assert settings == plugin.ADRPOSettings(beta0=0.05, a_min=-0.05, a_max=0.05, scale=1.0)
    custom = actor_config(policy_loss_fields=dict(adrpo_adv_clip_min=-0.1, adrpo_adv_coef_scale=0.04))
    assert plugin.adrpo_settings(custom) == plugin.ADRPOSettings(beta0=0.04, a_min=-0.1, a_max=0.04, scale=0.04)
    assert plugin.adrpo_settings(actor_config(adrpo=False)) is None
    assert plugin.adrpo_settings(actor_config(adrpo=None)) is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (dict(use_kl_loss=False), "actor.use_kl_loss"),
        (dict(kl_loss_coef=0.0), "actor.kl_loss_coef"),
        (dict(policy_loss_fields=dict(adrpo_adv_clip_min=0.05)), "policy_loss.adrpo_adv_clip_min (0.05)"),
        (dict(policy_loss_fields=dict(adrpo_adv_clip_min=0.1, adrpo_adv_clip_max=-0.1)), "policy_loss.adrpo_adv_clip_min (0.1)"),
        (dict(policy_loss_fields=dict(adrpo_adv_coef_scale=-1.0)), "policy_loss.adrpo_adv_coef_scale"),
    ],
)
def test_inconsistent_setting_fails_building_the_config(actor_config, fields, named):
    """The check runs in ActorConfig.__post_init__ (any strategy's config), so verl refuses the config itself."""
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        actor_config(**fields)


def test_same_settings_with_adrpo_off_are_accepted(actor_config):
    """use_kl_loss=False is fine when ADRPO is off: verl's own configs are never refused."""
    assert actor_config(adrpo=False, use_kl_loss=False).use_kl_loss is False
    assert actor_config(adrpo=None, kl_loss_coef=0.0).kl_loss_coef == 0.0


def test_clip_above_beta0_warns(actor_config):
    with pytest.warns(UserWarning, match=r"adrpo_adv_clip_max \(0.06\) > actor.kl_loss_coef \(0.04\)"):
        actor_config(policy_loss_fields=dict(adrpo_adv_clip_max=0.06))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actor_config()


def test_start_up_through_verl_command_line_overrides():
    """The recipe's overrides pass verl's validate_config; a bad or misspelt one fails there, naming the field."""
    adrpo = ["actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.04", TARGET]
    start_up(*adrpo, "+actor_rollout_ref.actor.policy_loss.adrpo_adv_clip_max=0.04")
    start_up("actor_rollout_ref.actor.use_kl_loss=False")  # stock verl, untouched
    with pytest.raises(InstantiationException, match="actor.use_kl_loss"):
        start_up(TARGET)
    with pytest.raises(InstantiationException, match="actor.kl_loss_coef"):
        start_up(*adrpo, "actor_rollout_ref.actor.kl_loss_coef=0")
    with pytest.raises(InstantiationException, match="unexpected keyword argument 'adrpo_adv_clip_mx'"):
        start_up(*adrpo, "+actor_rollout_ref.actor.policy_loss.adrpo_adv_clip_mx=0.04")
    with pytest.raises(InstantiationException, match="unexpected keyword argument 'adrpo_adv_clip_max'"):
        start_up("+actor_rollout_ref.actor.policy_loss.adrpo_adv_clip_max=0.04")  # forgot the _target_


def recipe_overrides(name: str) -> list[str]:
    """The ``key=value`` overrides of the bash block of docs/verl.md whose first line is ``# name``."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "verl.md").read_text()
    blocks = re.findall(r"```bash\n# ([\w-]+)\n(.*?)```", text, flags=re.S)
    block = dict(blocks)[name]
    return [token for token in shlex.split(block, comments=True) if re.match(r"^\+?[a-z_]+(\.[\w]+)+=", token)]


def test_docs_recipe_passes_verl_start_up():
    """docs/verl.md's GSM8K recipe (ADRPO and the fixed-β baseline) is accepted by verl 0.9.1's config and
    validate_config, and switches ADRPO on (β0 = 0.04, clip ±0.04) or leaves verl's loss stock."""
    from verl.utils.config import omega_conf_to_dataclass

    common = recipe_overrides("grpo-common")
    assert "actor_rollout_ref.actor.kl_loss_coef=0.04" in common and "algorithm.adv_estimator=grpo" in common
    for name, expected in [("adrpo", plugin.ADRPOSettings(0.04, -0.04, 0.04, 1.0)), ("fixed-beta", None)]:
        with initialize_config_module(config_module="verl.trainer.config", version_base=None):
            config = compose(config_name="ppo_trainer", overrides=[*common, *recipe_overrides(name)])
        validate_config(config, use_reference_policy=True, use_critic=False)
        assert plugin.adrpo_settings(omega_conf_to_dataclass(config.actor_rollout_ref.actor)) == expected, name


def test_other_verl_versions_are_refused(monkeypatch, actor_config):
    """The wrap reaches into ppo_loss's globals as 0.9.1 has them: another version installs nothing (with a
    warning, since verl's plugin loader hides exceptions) and an ADRPO config then fails at start-up."""
    plugin.check_verl_version("0.9.1")
    with pytest.raises(RuntimeError, match=r"tested with that version only; found verl 0.10.0"):
        plugin.check_verl_version("0.10.0")
    monkeypatch.setattr(plugin, "installed_verl_version", lambda: "0.10.0")
    with pytest.warns(UserWarning, match="found verl 0.10.0"):
        assert plugin.install() is False
    with pytest.raises(RuntimeError, match="found verl 0.10.0"):
        actor_config()
    assert actor_config(adrpo=None).use_kl_loss  # stock configs still build


def test_installed_in_every_holder_and_idempotent():
    from verl.trainer.distillation import losses as distillation_losses

    assert losses.ppo_loss is plugin.ppo_loss
    assert distillation_losses.ppo_loss is plugin.ppo_loss
    assert ActorConfig.__post_init__ is plugin._checked_actor_post_init
    assert plugin.install() is True
    assert losses.ppo_loss.__wrapped__ is plugin._STOCK_PPO_LOSS
    assert ActorConfig.__post_init__.__wrapped__ is plugin._STOCK_ACTOR_POST_INIT


PROBE = (
    "import sys, verl; from verl.workers.utils import losses; "
    "print('adrpo.integrations.verl' in sys.modules, losses.ppo_loss.__module__)"
)


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "True adrpo.integrations.verl"),  # the verl.plugins entry point
        ({"VERL_USE_EXTERNAL_PLUGINS": "none"}, "False verl.workers.utils.losses"),
        ({"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "adrpo.integrations.verl"}, "True adrpo.integrations.verl"),
    ],
    ids=["entry-point", "plugins-off", "external-modules"],
)
def test_import_verl_loads_the_plugin(environment, expected):
    """A fresh interpreter: ``import verl`` alone puts the wrap in place, through either of verl's mechanisms."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")} | environment
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
