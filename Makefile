# Two-command quick start: `make demo` (main job) and `make test` (the test suite).
# Both bootstrap .venv on first use; nothing needs installing by hand.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup data demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $@

data: setup
	bash scripts/get-data.sh $(BIN)

demo: data
	bash scripts/demo.sh $(BIN)

test: data
	$(BIN)/ruff check src tests benchmarks experiments examples
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks experiments examples

bench: data
	$(BIN)/python benchmarks/round_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache
