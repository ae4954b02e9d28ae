# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_WEIGHTS := ../shared/weights/squeezenet1_1-imagenet.pth
# The real ImageNet SqueezeNet trunk when ../shared is beside the checkout
# (no machine here can download weights), random weights otherwise.
DEMO_WEIGHTS ?= $(if $(wildcard $(SHARED_WEIGHTS)),$(SHARED_WEIGHTS),random)

.PHONY: install demo test test-fast bench docs-tables clean-cache

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The main job on the built-in demo collection: extract, fine-tune briefly,
# then the paper-style table (off-the-shelf heads and the fine-tuning column),
# then similarity retrieval with a contact sheet.
demo: install
	$(PY) extract.py --backbone squeezenet1_1 --weights $(DEMO_WEIGHTS) --collection demo
	$(PY) finetune.py --backbone squeezenet1_1 --task material --init $(DEMO_WEIGHTS) \
		--epochs 3 --image-size 112 --collection demo --no-progress
	$(PY) classify.py --head all --collection demo
	$(PY) analyze.py retrieve --backbone squeezenet1_1 --task type --collection demo --no-progress

# The import contracts (setup.cfg), the docs site (a broken link or API page fails it),
# then every test.
test: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mkdocs build --strict --quiet -d build/site
	$(PY) -m pytest

# The contracts and the tests not marked slow (the scripts in subprocesses, real images, Ray).
test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow"

# Every benchmark (median and min-max of 3 repeats each, JSON in bench/results/), then
# the docs' tables written from those files. About an hour and a half on two cores.
bench: install
	$(PY) bench/bench_extract.py
	$(PY) bench/bench_cache.py
	$(PY) bench/bench_retrieval.py --scale 0.2
	$(PY) bench/bench_softmax.py --scale 0.1
	$(PY) bench/bench_grid.py --scale 0.05
	$(PY) bench/bench_finetune.py
	$(PY) bench/bench_gpu.py
	$(PY) bench/bench_duplicates.py
	$(PY) bench/bench_index.py --rows 1000000 --dim 512
	$(PY) bench/tables.py

# docs/generated/*.md from bench/results/*.json (the docs include them; never typed by hand)
docs-tables: install
	$(PY) bench/tables.py

clean-cache:
	find cache -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
