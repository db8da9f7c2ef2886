# Two commands do all the setup on a fresh machine:
#   make demo   stream actions from a tiny FAS-VLA with the three feedback modes
#   make test   the whole test suite (slow tests included)

VENV ?= .venv
PYTHON := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PYTHON) demo.py

test: $(VENV)/.installed
	$(PYTHON) -m pytest

clean:
	rm -rf $(VENV)
