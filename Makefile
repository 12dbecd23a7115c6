# make demo: a lab of containers running replimesh. make test: everything CI checks.
# Every target runs the project's own virtualenv (.venv), made by `make venv`.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv lint unit integration molecule test demo bench lab-down clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	scripts/make-venv $(VENV)
	touch $@

lint: venv
	ruff check .
	yamllint --strict .
	ansible-lint

unit: venv
	pytest tests/unit

integration: venv
	pytest tests/integration

molecule: venv
	molecule test --scenario-name default

test: lint unit integration molecule

demo: venv
	scripts/demo

# Not part of test: labs of 3, 5 and 8 nodes, about 15 minutes (bench/README.md).
bench: venv
	pip install --quiet -r bench/requirements.txt
	python bench/convergence.py --sizes 3,5,8 --runs 5

lab-down: venv
	fab lab.down

clean: lab-down
	rm -rf $(VENV) .pytest_cache .ruff_cache
