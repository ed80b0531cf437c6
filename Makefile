# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both are idempotent: the venv is (re)installed only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.classrobust-installed

.PHONY: setup data browser demo test bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# torchattacks and pyautoattack (the reference AutoAttack, fra31/auto-attack packaged) are
	@# test-only cross-checks; torchattacks' metadata pins an old `requests` that would downgrade
	@# the user's, so both are installed without dependencies (each needs only torch).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps 'torchattacks>=3.5.1' 'pyautoattack>=0.2.0'
	touch $(STAMP)

data:
	@bash scripts/setup-system.sh

browser:
	@bash scripts/setup-system.sh --browser

demo: setup
	$(BIN)/classrobust demo $(ARGS)

test: setup browser
	$(BIN)/python -m pytest $(ARGS)

bench: setup
	$(BIN)/python benchmarks/attack_speed.py
	$(BIN)/python benchmarks/vs_torchattacks.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
