"""verl's own CPU tests of the code the plugin wraps pass with the plugin loaded as without it.

The tests ship in verl's source distribution, not in this repository: it is fetched from the package
registry (``pip download``) into ``.cache/`` once, and its tests run twice in fresh interpreters, once
with the plugin (verl's entry point) and once with ``VERL_USE_EXTERNAL_PLUGINS=none``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl.workers", reason="verl is not installed here: tests/verl run in their own environment, make verl-test")

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from pathlib import Path  # noqa: E402

from adrpo.integrations import verl as plugin  # noqa: E402

VERSION = plugin.TESTED_VERL_VERSIONS[0]
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "verl-sdist"
UPSTREAM_TESTS = [
    "tests/trainer/ppo/test_core_algos_on_cpu.py",
    "tests/trainer/ppo/test_loss_aggregation_on_cpu.py",
    "tests/trainer/ppo/test_dynamic_policy_losses_on_cpu.py",
]
# Runs pytest after `import verl`, and says whether verl's plugin loading imported ours.
RUNNER = (
    "import sys, verl, pytest; code = pytest.main(sys.argv[1:]); "
    "print('plugin loaded:', 'adrpo.integrations.verl' in sys.modules); sys.exit(code)"
)


def verl_source() -> Path:
    """verl's sdist tree (tests only) for the tested version, fetched once into .cache/verl-sdist."""
    root = CACHE / f"verl-{VERSION}"
    if (root / UPSTREAM_TESTS[0]).exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"verl=={VERSION}", "-d", str(CACHE)]
    fetched = subprocess.run(command, capture_output=True, text=True, timeout=300)
    archive = CACHE / f"verl-{VERSION}.tar.gz"
    assert fetched.returncode == 0 and archive.exists(), f"could not fetch verl's sdist with {' '.join(command)}:\n{fetched.stderr}"
    with tarfile.open(archive) as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(f"verl-{VERSION}/tests/")]
        sdist.extractall(CACHE, members=members, filter="data")
    return root


def run_upstream(root: Path, report: Path, environment: dict[str, str]) -> tuple[dict[str, str], bool]:
    """Each upstream test's outcome ("passed", "failed", "skipped") and whether the plugin was loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")} | environment
    command = [sys.executable, "-c", RUNNER, "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *UPSTREAM_TESTS]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), result.stdout + result.stderr
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[name] = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
    return outcomes, "plugin loaded: True" in result.stdout


def test_verl_cpu_tests_have_no_new_failures_with_the_plugin(tmp_path):
    root = verl_source()
    with_plugin, loaded = run_upstream(root, tmp_path / "with.xml", {})
    without_plugin, loaded_without = run_upstream(root, tmp_path / "without.xml", {"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert loaded and not loaded_without
    assert with_plugin.keys() == without_plugin.keys()
    new_failures = [name for name, outcome in with_plugin.items() if outcome == "failed" and without_plugin[name] != "failed"]
    assert new_failures == []
    passed = sum(outcome == "passed" for outcome in with_plugin.values())
    assert passed == sum(outcome == "passed" for outcome in without_plugin.values())
    assert passed >= 30, with_plugin  # verl 0.9.1's three files hold 30 tests, all passing on CPU
