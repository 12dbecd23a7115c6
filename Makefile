# make demo: a lab of containers running replimesh. make test: everything CI checks.
# Every target runs the project's own virtualenv (.venv), made by `make venv`.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv lint unit integration molecule test demo bench bench-convergence bench-swarm \
	bench-latency bench-rounds bench-watcher chaos lab-down clean

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
	pytest --durations=25 tests/integration

molecule: venv
	molecule test --scenario-name default

test: lint unit integration molecule

demo: venv
	scripts/demo

# Not part of test (bench/README.md): bench-convergence, labs of 3, 5 and 8 nodes, about
# 15 minutes; bench-swarm, labs of 2, 4 and 8 nodes sending a 128 MiB file, about 30;
# bench-latency and bench-rounds (watch mode), labs of 3 and 5 nodes with large trees;
# bench-watcher, the watcher's own memory and idle CPU on a 2-node lab, about 10.
bench: bench-convergence bench-swarm bench-latency bench-rounds bench-watcher

bench-convergence: venv
	pip install --quiet -r bench/requirements.txt
	python bench/convergence.py --sizes 3,5,8 --runs 5

bench-swarm: venv
	pip install --quiet -r bench/requirements.txt
	python bench/swarm.py --sizes 2,4,8 --mb 128 --rate 100mbit --runs 3

bench-latency: venv
	pip install --quiet -r bench/requirements.txt
	python bench/latency.py --sizes 3,5 --files 100000 --changes 20

bench-rounds: venv
	pip install --quiet -r bench/requirements.txt
	python bench/rounds.py --sizes 3,5 --files 1000,10000,100000,300000 --runs 5

bench-watcher: venv
	pip install --quiet -r bench/requirements.txt
	python bench/watcher.py --folders 0,25000,50000,100000 --idle 60

# Not part of test: the seeded chaos run (tests/integration/chaos.py), one seed after the
# other on one lab named chaos, brought up and down; about 2-3 minutes per seed of 60 steps.
SEEDS ?= 1 2 3 4 5 6 7 8 9 10
STEPS ?= 60

chaos: venv
	python -m tests.integration.chaos --seed $(SEEDS) --steps $(STEPS)

lab-down: venv
	fab lab.down

clean: lab-down
	rm -rf $(VENV) .pytest_cache .ruff_cache
