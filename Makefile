# make demo   set up .venv, then run all stages on the built-in synthetic demo data (CPU, minutes)
# make demo-multiclass   the same on a synthetic multi-class set (5 classes)
# make test   set up .venv, then run the whole test suite (CPU, <= 10 min on 2 cores)
# make test-quick   the quick tier: pure functions and in-process checks, no tiny runs or processes (<= 90 s)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := --preset demo --input input/demo --output output/demo
DEMO_MC := --preset demo --input input/demo_multiclass --output output/demo_multiclass --classes 5 \
	--class-colors input/demo_multiclass/classes.csv

.PHONY: setup demo demo-multiclass test test-quick bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	@echo 'setup: installing PyTorch, segmentation-models-pytorch etc. into $(VENV) (about 1.5 minutes, quiet)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

demo: setup
	$(PY) 01_prepare.py --demo $(DEMO)
	$(PY) 02_train.py --fold all --resume $(DEMO)
	$(PY) 03_predict.py $(DEMO)
	$(PY) 04_submit.py --baselines --score $(DEMO)

# the multi-class demo: synthetic aerial scenes, 5 classes (labels in PNGs), per-class submission rows
demo-multiclass: setup
	$(PY) 01_prepare.py --demo --demo-kind multiclass --demo-width 480 --demo-height 320 $(DEMO_MC)
	$(PY) 02_train.py --fold all --resume $(DEMO_MC)
	$(PY) 03_predict.py $(DEMO_MC)
	$(PY) 04_submit.py --baselines --score $(DEMO_MC)

test: setup
	$(PY) -m pytest -q tests

test-quick: setup
	$(PY) -m pytest -q -m "not slow" tests

clean-demo:
	rm -rf input/demo output/demo input/demo_multiclass output/demo_multiclass
