# Two commands do all the setup on a fresh machine:
#   make demo   synthetic LeRobot dataset -> training -> streaming with the three feedback modes -> LIBERO rollouts
#               (where LIBERO is installed) -> the replay app on them and on the shipped examples
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

# headless Chromium for the tests that render the app's page
$(VENV)/.chromium: $(VENV)/.installed scripts/setup_chromium.sh
	scripts/setup_chromium.sh
	touch $@

demo: $(VENV)/.installed
	$(PYTHON) demo.py

test: $(VENV)/.libero $(VENV)/.chromium
	$(PYTHON) -m pytest

clean:
	rm -rf $(VENV)
