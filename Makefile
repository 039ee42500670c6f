# Two commands do everything on a fresh machine: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROFILE ?= default
SEED    ?= 0

.PHONY: run test test-all bench docs setup clean corpus

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv --system-site-packages $(VENV)   # reuses an installed torch when it satisfies the requirement
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,triton,frameworks]"
	touch $@

setup: $(BIN)/.installed

BENCH_IMPLS := torch-functional seed-000 seed-001 seed-002 seed-003 torch-bn-relu torch-bn-add-relu

run: setup            ## check every bundled plugin (BatchNorm, fusion, sync), time the CPU ones: reports/latest.{md,json}
	$(BIN)/bncheck run --profile $(PROFILE) --seed $(SEED) --out reports --bench small $(addprefix --bench-impl ,$(BENCH_IMPLS))

test: setup           ## the test suite CI runs (on every core: pytest-xdist, one test file per worker)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile tests

test-all: setup       ## including the slow mutant-zoo searches over several seeds
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q tests

bench: setup          ## speed benchmarks (pytest-benchmark): kernels and the harness, saved to reports/harness-bench.json
	$(BIN)/python -m pytest -q --benchmark-only --benchmark-json reports/harness-bench.json tests/benchmarks

docs: setup          ## regenerate docs/catalog.md from bncheck/catalog.py
	$(BIN)/bncheck catalog --out docs/catalog.md

# The public-code corpus (corpus/): plugin adapters for BatchNorm, folding and sync BatchNorm code in PyPI packages,
# in a venv of its own. Not part of `make test`.
CVENV := .venv-corpus
CBIN  := $(CVENV)/bin

$(CBIN)/.installed: pyproject.toml corpus/requirements.txt corpus/requirements-nodeps.txt
	$(PY) -m venv $(CVENV)
	$(CBIN)/python -c "import torch" 2>/dev/null || $(CBIN)/pip install -q torch==2.13.0
	$(CBIN)/pip install -q -e . -r corpus/requirements.txt
	$(CBIN)/pip install -q --no-deps -r corpus/requirements-nodeps.txt
	touch $@

corpus: $(CBIN)/.installed   ## check the corpus plugins: reports/corpus/, reports/corpus.md and docs/corpus.md
	BNCHECK_DISABLE_ENTRY_POINTS=1 $(CBIN)/bncheck run --plugins corpus --profile $(PROFILE) --seed $(SEED) \
	    --jobs 2 --out reports/corpus; status=$$?; [ $$status -le 1 ] || exit $$status  # 1: findings differ from expect
	$(CBIN)/bncheck report reports/corpus/latest.json --out reports/corpus.md
	$(CBIN)/python scripts/corpus_table.py reports/corpus/latest.json $(wildcard reports/corpus-seed*/latest.json) \
	    --out docs/corpus.md --readme README.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
