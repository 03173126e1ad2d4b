# Two commands on a fresh Debian machine with Python 3.11:
#   make demo   set everything up, then run the main job
#   make test   set everything up, then run the test suite
# Both install what they need: Debian packages (ffmpeg, espeak-ng, Mesa EGL, Chromium and PostgreSQL
# for the browser and database tests) when missing, the
# virtual environment in .venv, and the project with its Python dependencies.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt whenever the dependency declaration changes.
DEPS_HASH := $(shell cat pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
APT_PACKAGES := ffmpeg espeak-ng libegl1 libgl1-mesa-dri libegl-mesa0 chromium postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
PYTEST_ARGS ?=

# Keep the caches of numba, matplotlib, torch and gradio inside the project.
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export TORCH_HOME := $(CURDIR)/.cache/torch
export GRADIO_TEMP_DIR := $(CURDIR)/.cache/gradio

.PHONY: demo test test-all bench eval example-model system-deps venv clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# The Khronos glTF validator (npm) that the export tests run every written .glb through.
GLTF_VALIDATOR := .cache/node/node_modules/gltf-validator/package.json
$(GLTF_VALIDATOR):
	@if command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix .cache/node gltf-validator@2.0.0-dev.3.10 \
	    || echo "npm could not install gltf-validator: the glTF validation test will be skipped"; \
	else echo "npm is missing: the glTF validation test will be skipped"; fi

venv: system-deps $(STAMP)

# The main job: the Gradio demo on http://127.0.0.1:7860 (python -m demo --help for --host/--port).
demo: venv
	$(BIN)/python -m demo

test: venv $(GLTF_VALIDATOR)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: venv $(GLTF_VALIDATOR)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python -m eval.bench preprocess ../shared/data/grid_s1/s1_train_180s.mp4

# The evaluation on the shared GRID speaker (about 46 minutes on 2 CPU cores from scratch).
eval: venv
	$(BIN)/python -m eval.run --video ../shared/data/grid_s1/s1_train_180s.mp4 \
	  --test-clips ../shared/data/grid_s1/eval_clips --preset quick --out eval_results

# re-make the model the demo ships (demo/assets/grid_s1_model) from GRID s1's 3-minute clip
example-model: venv
	$(BIN)/python -m demo.example_model --video ../shared/data/grid_s1/s1_train_180s.mp4

clean:
	rm -rf $(VENV) .cache examples test-artifacts bench-results eval_results
