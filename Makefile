# Two commands: `make demo` (install + run the demo subject) and `make test` (install + test suite).
# The virtual environment in .venv is created once and reused; it is rebuilt when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
DEMO_TARGETS := results/demo/ingest_preview.png results/demo/preprocess_sheet.png results/demo/features.parquet \
                results/demo/prior/prior_sheet.png results/demo/train/deltaplane.pt results/demo/train/ablation.json

.PHONY: demo test install install-dev lint clean-demo

demo: install
	$(BIN)/snakemake --cores $(CORES) $(DEMO_TARGETS)
	@echo ""
	@echo "Demo done. Outputs of subject 'demo' are in results/demo/:"
	@echo "  frames/ audio.wav meta.json         ingested clip;  ingest_preview.png"
	@echo "  landmarks.parquet crops/ crop.parquet camera.parquet masks/"
	@echo "                                      face preprocessing;  preprocess_sheet.png"
	@echo "  features.parquet                    audio windows, blink, pose and landmark tokens"
	@echo "  prior/                              personalized tri-plane generator, P_id.pt;  prior_sheet.png"
	@echo "  train/                              deltaplane U-Net (deltaplane.pt), loss_curves.png, samples/,"
	@echo "                                      ablation.json + ablation_sheet.png (does audio drive the mouth?)"
	@echo "  logs/ benchmarks/                   per-stage logs and timings"
	@echo "Report: .venv/bin/snakemake --report results/report.html"

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check talk3d_core tests bench workflow/scripts
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .
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
	@if $(BIN)/python -m pip list 2>/dev/null | grep -i nvidia; then \
		echo "error: CUDA (nvidia) packages were installed; torch must be the 2.13.0 CPU build" >&2; exit 1; fi
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

clean-demo:
	rm -rf results/demo resources/demo
