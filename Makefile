# The two commands of the README. Each creates its own virtualenv in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint bench clean

$(BIN)/procfleet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,embedded,dev]'
	touch $@

run: $(BIN)/procfleet
	$(BIN)/procfleet up

# The Debian packages the tests need: installed when root, else the command to run.
test: $(BIN)/procfleet
	scripts/system-deps
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(BIN)/procfleet
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .procfleet .pytest_cache
