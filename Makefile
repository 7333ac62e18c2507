# Two commands on a fresh clone: `make run` (the default ablation) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR := multirun/make-run-$(shell date +%Y%m%d-%H%M%S)

.PHONY: run test test-slow test-all test-floor test-gpu device-wheels results clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision are pinned to the builds that pip finds on this project's machines; a change of
# those pins (here) or of the dependencies (pyproject.toml) installs again
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) run.py -m attention=none,se trainer.max_epochs=4 hydra.sweep.dir=$(RUN_DIR)
	$(PY) analysis/summarize.py $(RUN_DIR)

# the suite without the tests marked slow (torch.compile on CPU, the longest end-to-end runs), one process per core (pytest-xdist,
# a test file per process) with one thread each: two-thread torch ops in two processes oversubscribe
# two cores and took longer than one process alone
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

test: $(STAMP)
	$(PYTEST) -m "not slow"

# the tests marked slow alone (torch.compile on the CPU, the longest end-to-end runs): CI runs them after `make test`
test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: $(STAMP)
	$(PYTEST)

# the suite against the lowest versions pyproject.toml allows (.ci/floors.txt, in a venv of its own;
# torch and torchvision stay at the pinned builds, the ones pip finds on disk here: any other version
# is a download of gigabytes of CUDA wheels)
FLOOR_VENV := .venv-floor
test-floor:
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(FLOOR_VENV)/bin/python -m pip install --quiet -c .ci/floors.txt -e '.[dev]'
	OMP_NUM_THREADS=1 $(FLOOR_VENV)/bin/python -m pytest -q -n auto --dist loadfile -m "not slow" -p no:cacheprovider

# the CUDA-only tests (marker gpu) and one epoch of trainer=gpu compile=true on the embedded data, where
# the venv is (.ci/gpu-session runs them first on a device machine); without CUDA each is skipped, exit 0
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu -rs

# the wheels a device machine lacks, into .whl (git-ignored; every GPU call carries it: .ci/gpu-session):
# hydra-core, omegaconf and antlr4 from ../shared/device-wheels, the joblib launcher (pure Python)
device-wheels: | $(PY)  # pip download needs the venv's pip, not the project installed
	mkdir -p .whl
	cp ../shared/device-wheels/*.whl .whl/
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --dest .whl hydra-joblib-launcher==1.2.0

# RESULTS.md from the committed results/<table>/ folders (analysis/results_md.py; a test checks it is current)
results: $(STAMP)
	$(PY) analysis/results_md.py

# caches and make run's sweeps only: outputs/ and multirun/ hold your runs (and reproduce's checkpoints)
clean:
	rm -rf .pytest_cache multirun/make-run-*
