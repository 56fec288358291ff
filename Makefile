# Two commands do all the set-up: `make run` and `make test`. Each creates or reuses
# .venv, installs the CPU build of torch first (an unpinned torch pulls a CUDA build),
# then the project with every version pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Prefect runs in-process with no server; keep its state and all caches out of $HOME.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING
export HF_DATASETS_OFFLINE := 1
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export XDG_CACHE_HOME ?= $(CURDIR)/.cache

.PHONY: run test install clean

run: $(STAMP)
	$(BIN)/stm run $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check pipeline models flows tests bench examples
	$(BIN)/python -m pytest $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .prefect .cache
