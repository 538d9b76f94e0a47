# Two entry points for a fresh machine: `make demo` (main job, offline) and `make test`.
# Both create .venv and install the package with pinned versions from constraints.txt.
# `make pretrained` rebuilds the shipped models (docs/synth.md; about 20-30 min each on 2 CPU cores).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean pretrained

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tscam-explain demo --out out/demo

pretrained: $(STAMP)
	for name in vit-synth tscam-synth trt-synth; do $(VENV)/bin/tscam-explain pretrained build $$name || exit 1; done

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
