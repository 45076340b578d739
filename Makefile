# The two commands of the README's quickstart. Both create (or reuse) .venv and install the
# pinned dependencies of constraints.txt before they run; nothing else needs to be set up.
#   make demo   train the tiny model through the CoSMo-RL schedule on the synthetic suite (CPU)
#   make test   run the whole test suite (slow tests included, as CI does)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cosmojax-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test setup clean-venv

setup: $(STAMP)

# Reinstalled whenever setup.py or the constraints change.
$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt "pip" "setuptools" "wheel"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(PY) experiments/train.py --config=configs/cosmo_tiny.py $(DEMO_ARGS)

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing." >&2; exit 1; fi; \
	exit $$rc

clean-venv:
	rm -rf $(VENV)
