# The two commands of the README:
#   make sample   set up .venv and run the local sample build (out/sample/)
#   make test     set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# albumentations (pulled in by img2dataset) checks PyPI for updates on import; keep it quiet.
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: sample test lint format bench stats report-png docs setup clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

sample: $(STAMP)
	$(BIN)/flamingo-corpus sample $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lint, format check and type check (CI runs it after the tests). mypy cannot see the editable
# install's import hook, so it checks a tree of links that lays pipeline/ and filters/ out as the
# installed package flamingo_corpus (setup.cfg package_dir).
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/flamingo_corpus
	ln -s $(CURDIR)/pipeline/* $(TYPECHECK)/flamingo_corpus/
	ln -s $(CURDIR)/filters $(TYPECHECK)/flamingo_corpus/filters
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/setup.cfg -p flamingo_corpus

# Rewrite the code in the project's format and apply ruff's safe fixes.
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The statistics report of each sample build (after make sample): out/sample/<corpus>-report.html
stats: $(STAMP)
	$(BIN)/flamingo-corpus stats out/sample/laion --output out/sample/laion-report.html $(ARGS)
	$(BIN)/flamingo-corpus stats out/sample/mmc4 --output out/sample/mmc4-report.html $(ARGS)

# Rewrite the generated tables of docs/ (recipe keys, index columns, drop reasons) from the code;
# tests/unit/test_reference.py fails until they are current.
docs: $(STAMP)
	$(BIN)/python -m flamingo_corpus.reference

# The statistics reports of the sample builds rendered to PNG with headless Chromium (Debian's
# package, installed when missing), to look at what a reader sees: out/sample/<corpus>-report.png
report-png: stats
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	for corpus in laion mmc4; do \
		chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1300,9000 \
			--screenshot=$(CURDIR)/out/sample/$$corpus-report.png file://$(CURDIR)/out/sample/$$corpus-report.html; \
	done

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py $(ARGS)

clean:
	rm -rf out .pytest_cache build
