# Set-up and everyday commands. Everything installs into .venv from the repo's own files.
#
#   make run     set up, then train and evaluate AMR on the embedded synthetic data (about 7 min on 2 cores)
#   make test    set up, then run the test suite (two worker processes, one file per worker at a time)
#
# torch is pinned to the CPU build this machine provides (any other spec pulls
# CUDA wheels); torchattacks goes in with --no-deps because it declares
# torchvision and an old requests that it never imports. pyautoattack is the
# reference APGD of the parity tests (its APGD module imports torch only).
# They come last: an install that resolves dependencies afterwards would report
# torchattacks' undeclared requirements as an ERROR.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1 pyautoattack==0.2.0
	touch $@

run: setup
	$(BIN)/mmrobust run --defense amr --dataset synthetic

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) build dist *.egg-info
