# Two entry points for a fresh machine: `make demo` (main job, offline) and `make test`.
# Both create .venv and install the package with pinned versions from constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tscam-explain explain --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
