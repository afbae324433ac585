# Setup is two commands: `make serve` and `make test`. Both build .venv on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall only when pyproject.toml changes: every install of the project brings back
# torchvision & co., which break vLLM's CPU build, so we remove them after.
STAMP  := $(VENV)/.installed-stamp
# uv installs the same versions pip resolves (compared with `pip freeze`) in ~20 s instead of
# ~3 min. Like pip, it takes torch's CPU build from pip's configured wheel folder, if any.
# Like pip, it compiles the bytecode at install (--compile-bytecode): where PYTHONDONTWRITEBYTECODE
# is set (this box, many Docker images) nothing is cached later, and every process that imports
# torch and vLLM (each engine start spawns two) would compile them again, taking twice as long.
UV_VERSION := 0.13.9
FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV     := $(BIN)/uv pip

.PHONY: install serve test test-fast lint typecheck pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	($(BIN)/python -m pip install -q uv==$(UV_VERSION) && \
	  $(UV) install --python $(BIN)/python -q --compile-bytecode $(addprefix --find-links ,$(FIND_LINKS)) -e '.[cpu,dev]') || \
	  $(BIN)/python -m pip install -q -e '.[cpu,dev]'  # no uv (offline mirror only): pip
	$(UV) uninstall --python $(BIN)/python -q torchvision torchaudio torchcodec 2>/dev/null || \
	  $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/t2serve serve --config configs/default.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy controller storage server cli tests bench models mkdocs_hooks.py

# Two workers, whole files each (module fixtures such as the README's server on :8000 are
# started once; the files on the shared chain-pair engines go together: tests/conftest.py's
# SHARED_FILES), in conftest's longest-first order: xdist's own reorder (by test count) would
# start the longest files last.
WORKERS ?= 2

pytest: $(STAMP)
	$(BIN)/pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder

# Lint, types and the suite run side by side: the suite leaves a core idle about a third of
# the time (its processes wait on servers and engine starts), where ruff's and mypy's ~30 s
# of CPU fit. Any of the three failing fails `make test`.
test: $(STAMP)
	$(MAKE) --no-print-directory -j3 lint typecheck pytest

# The inner loop: no engine, no services, no server processes (tests/conftest.py marks them).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m "not engine and not redis and not prometheus and not slow"

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
