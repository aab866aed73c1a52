# Two commands do all the set-up on a fresh machine:
#   make demo   - create/reuse the virtual environment, run the main job
#   make test   - create/reuse the virtual environment, run the test suite
# VENV can point elsewhere (e.g. a shared cache) to reuse an environment across clones.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.probret-installed

.PHONY: demo test install clean-venv demo-model demo-bundle

$(STAMP): pyproject.toml requirements/torch-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c requirements/torch-cpu.txt -e '.[train,export,ray,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/probret demo

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# Rebuild the shipped demo model (train/pretrained/demo-spem) from configs/demo-spem.json,
# then its torch-free bundle (export/pretrained/demo-spem), which the default search runs.
demo-model: $(STAMP)
	$(VENV)/bin/probret demo-model
	$(MAKE) demo-bundle

# Re-export only the shipped demo bundle from the shipped checkpoint (export/demo_bundle.py).
demo-bundle: $(STAMP)
	$(PY) -m probret.export.demo_bundle

clean-venv:
	rm -rf $(VENV)
