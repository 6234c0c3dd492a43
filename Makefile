# make setup : create .venv with the pinned stack (tools/setup_env.sh), once
# make demo  : the main job on the embedded synthetic data (tools/demo.py)
# make test  : ruff + the test suite
PY := .venv/bin/python

.PHONY: setup demo test test-all clean
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Also the slow end-to-end runs.
test-all: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf output datasets/synthetic
