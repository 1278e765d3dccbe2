# make demo   set up .venv, then run all stages on the built-in synthetic demo data (CPU, minutes)
# make test   set up .venv, then run the test suite (CPU)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := --preset demo --input input/demo --output output/demo

.PHONY: setup demo test bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

demo: setup
	$(PY) 01_prepare.py --demo $(DEMO)
	$(PY) 02_train.py --fold all --resume $(DEMO)
	$(PY) 03_predict.py $(DEMO)
	$(PY) 04_submit.py --baselines --score $(DEMO)

test: setup
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf input/demo output/demo
