# The two commands of the README:
#   make sample   set up .venv and run the local sample build (out/sample/)
#   make test     set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# albumentations (pulled in by img2dataset) checks PyPI for updates on import; keep it quiet.
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: sample test bench stats setup clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

sample: $(STAMP)
	$(BIN)/flamingo-corpus sample $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The statistics report of each sample build (after make sample): out/sample/<corpus>-report.html
stats: $(STAMP)
	$(BIN)/flamingo-corpus stats out/sample/laion --output out/sample/laion-report.html $(ARGS)
	$(BIN)/flamingo-corpus stats out/sample/mmc4 --output out/sample/mmc4-report.html $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py $(ARGS)

clean:
	rm -rf out .pytest_cache
