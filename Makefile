# The two commands of the README. Both install what they need into the active Python environment.
PYTHON ?= python3
export PYTHON
export HF_HUB_OFFLINE ?= 1

.PHONY: demo demo-quick test lint bench setup setup-demo

## make demo: the main job (fetch real data and teacher, distil, fine-tune, merge, evaluate, export, report)
demo: setup-demo
	$(PYTHON) -m modernalbert.cli.main quickstart

## make demo-quick: the same in ~3 minutes (less data, fewer steps), into runs/quickstart-quick
demo-quick: setup-demo
	$(PYTHON) -m modernalbert.cli.main quickstart --quick

setup-demo:
	bash scripts/setup.sh export,analysis,eval

setup:
	bash scripts/setup.sh test

## make test: install, lint, run the whole test suite (CPU, a few minutes on 2 cores)
test: setup
	$(PYTHON) -m ruff check src tests benchmarks scripts
	$(PYTHON) -m pytest -q tests

lint: setup
	$(PYTHON) -m ruff check src tests benchmarks scripts

## make bench: the CPU benchmarks (ratios against baselines measured in the same run)
bench: setup
	$(PYTHON) benchmarks/mol_ffn.py
	$(PYTHON) benchmarks/merge.py
	$(PYTHON) benchmarks/train_step.py
	$(PYTHON) benchmarks/encoder.py
	$(PYTHON) benchmarks/deploy.py
	$(PYTHON) benchmarks/cli_help.py
