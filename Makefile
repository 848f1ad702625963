# segzoo: set-up, demo and tests. `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.segzoo-installed
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-fast lint format docs bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a CUDA build of several GB
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	# nnU-Net's PlainConvUNet (benchmark peer) imports without its timm/torchvision requirements
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps dynamic-network-architectures
	# nnU-Net v2's predictor (inference peer) with only the light modules its import needs; OpenVINO backend
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps nnunetv2 acvl_utils batchgenerators blosc2 msgpack \
		ndindex numexpr threadpoolctl
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[onnx,openvino]'
	@touch $@

install: $(STAMP)

# the demo's memory is small and known: it opts in to the faster allocator setting (segzoo.utils.cpu_allocator_from_env)
demo: install
	SEGZOO_CPU_ALLOCATOR=reuse $(BIN)/python -m segzoo.demo --out $(DEMO_DIR)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" -n 2

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

docs: install
	$(BIN)/mkdocs build --strict

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
