# Two commands for a newcomer: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

install: $(STAMP) dataset

# Re-install only when the requirements or the package metadata change.
$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The offline default dataset: Debian's dataset-fashion-mnist (gzip IDX files).
.PHONY: dataset
dataset:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing the Debian package dataset-fashion-mnist ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then \
		echo "Installing the Debian package dataset-fashion-mnist ..."; \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "NOTE: Fashion-MNIST not found in $(FASHION_MNIST_DIR). Install it with"; \
		echo "        sudo apt-get update && sudo apt-get install dataset-fashion-mnist"; \
		echo "      or pass another dataset (--dataset tfds:fashion_mnist downloads it; see README)."; \
	fi

demo: install
	$(BIN)/kdkeras demo

# One pytest worker per core (at most 4: each holds its own TensorFlow runtime). Most tests train tiny models,
# whose steps are bound by Python and op dispatch on one core, so two workers on 2 cores took the suite from about
# 19 to 8 minutes when it was smaller (one TensorFlow thread per worker measured no faster; 4 workers: 1047 s against
# 905 s, so not more). `--dist loadscope` keeps a module on one worker, so its module-scoped fixtures are built once.
# On 2026-12-07, from fresh clones after `make install` on 2 idle cores: `make test` 429 tests in 496 s of pytest
# (8 min 22 s in all, commit 5806307; 581 s and 631 s on the two commits before it: this machine drifts that much;
# 905 s at 06:00 the same day), `make test-fast` 242 in 88 s.
# `TEST_WORKERS=0 make test` runs it in one process.
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -q --numprocesses $(TEST_WORKERS) --maxprocesses 4 --dist loadscope --durations 15

# The developer's loop: unit and numerics tests, without the end-to-end runs marked `slow` (CI runs them all).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" --numprocesses $(TEST_WORKERS) --maxprocesses 4 --dist loadscope

lint: install
	$(BIN)/ruff check kdkeras tests experiments
	$(BIN)/ruff format --check kdkeras tests experiments

clean:
	rm -rf $(VENV) runs .pytest_cache
