# The two commands of the README. Each creates its own virtualenv in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/procfleet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,embedded,dev]'
	touch $@

run: $(BIN)/procfleet
	$(BIN)/procfleet up

test: $(BIN)/procfleet
	$(BIN)/pytest -q

lint: $(BIN)/procfleet
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .procfleet .pytest_cache
