# Two commands do all the setup on a fresh machine:
#   make demo   synthetic LeRobot dataset -> training -> streaming with the three feedback modes
#   make test   the whole test suite (slow tests and the LIBERO simulator included)

VENV ?= .venv
PYTHON := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export MUJOCO_GL ?= egl

.PHONY: demo test clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# LIBERO (MuJoCo, BDDL tasks, meshes) for the evaluation and its tests
$(VENV)/.libero: $(VENV)/.installed requirements-libero.txt scripts/setup_libero.sh
	scripts/setup_libero.sh $(PYTHON)
	touch $@

demo: $(VENV)/.installed
	$(PYTHON) demo.py

test: $(VENV)/.libero
	$(PYTHON) -m pytest

clean:
	rm -rf $(VENV)
