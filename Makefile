# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every package the venv holds, at one version, with its hashes; `make lock` writes it.
LOCK   := requirements.lock
SRC    := daemon tests bench

.PHONY: venv run test lint format lock bench clean

# The venv is rebuilt from scratch whenever the lock or pyproject.toml changes,
# so it holds exactly what the lock says (nothing left over from an older lock).
# The build backend comes from the lock too (--no-build-isolation).
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m personsd.firstrun

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy

# Layout and import order only; `ruff check --fix` for the rest, by hand.
format: $(STAMP)
	$(BIN)/ruff check --select I --fix $(SRC)
	$(BIN)/ruff format $(SRC)

# Four workers on two cores: most end-to-end tests wait on subprocesses,
# sockets and settle timers, so more workers overlap the waiting.
test: lint
	$(BIN)/pytest -n 4 --durations=10 $(PYTEST_ARGS)

# The lock from pyproject.toml's ranges (runtime, [test] and [dev]), for
# Python 3.11 on any platform. Versions already in the lock are kept when they
# still fit; `make lock LOCK_ARGS=--upgrade` moves everything to the newest.
# Order-only prerequisite: a changed pyproject.toml must not rebuild the venv
# from the old lock first. An unchanged lock keeps its timestamp (no rebuild).
lock: | $(STAMP)
	cp $(LOCK) $(LOCK).new
	$(BIN)/uv pip compile pyproject.toml --extra test --extra dev --universal \
		--python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
		--quiet $(LOCK_ARGS) -o $(LOCK).new
	if cmp -s $(LOCK) $(LOCK).new; then rm $(LOCK).new; else mv $(LOCK).new $(LOCK); fi

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
