# make setup : create .venv with the pinned stack (tools/setup_env.sh), once
# make demo  : the main job on the embedded synthetic data (tools/demo.py)
# make train-real : a real-cell model on the CPU within 60 minutes (tools/train_real.py)
# make synthetic-model : a starting model from synthetic images alone (no annotations needed)
# make test  : ruff + the test suite
PY := .venv/bin/python

.PHONY: setup demo train-real synthetic-model test test-all clean
setup:
	bash tools/setup_env.sh

# The make targets replace their own earlier run (--overwrite: exactly its files; a folder
# holding anything else is refused).
demo: setup
	$(PY) tools/demo.py --overwrite

# Real cells on the CPU in <= 60 min: DATA=Kaggle-layout folder or COCO JSON (default: ../shared/data/sartorius_recon)
train-real: setup
	$(PY) tools/train_real.py --overwrite $(if $(DATA),--data $(DATA))

# No real data needed: segment with it, correct in napari, then train-real on the saved folder.
synthetic-model: setup
	$(PY) tools/train_real.py --synthetic-only --minutes 30 --overwrite

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Also the slow end-to-end runs.
test-all: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf output datasets/synthetic
