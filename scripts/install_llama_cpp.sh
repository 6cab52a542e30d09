#!/usr/bin/env bash
# Build llama.cpp's Python binding (llama-cpp-python) once, CPU-only, and install it into a Python:
#
#     scripts/install_llama_cpp.sh [PYTHON]          # PYTHON defaults to .venv/bin/python
#
# The GGUF tests load every exported file in llama.cpp, the runtime the files are for, and compare its
# logits with transformers'. PyPI ships llama-cpp-python only as a source package, and compiling it takes
# a long while on a small machine, so the wheel is built once into a cache folder and reused:
#
#     TUNEFORGE_WHEEL_CACHE     where the wheel is kept (default $HOME/.cache/tuneforge-tests/wheels)
#     LLAMA_CPP_PYTHON_VERSION  which release (default 0.3.36, the one the tests are written against)
#     BUILD_JOBS                compiler processes (default 2)
#
# When the build is impossible here (no C/C++ compiler, the source package cannot be fetched) the script
# says why, records the reason in the cache folder for the tests' skip message, and exits 0, so that
# `make test` goes on and the llama.cpp tests skip with that reason. A build that starts and then fails
# is a real problem and exits 1 with the end of the compiler log.
set -euo pipefail

PY="${1:-.venv/bin/python}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TUNEFORGE_WHEEL_CACHE:-$HOME/.cache/tuneforge-tests/wheels}"
JOBS="${BUILD_JOBS:-2}"
REASON_FILE="$CACHE/llama_cpp_python-$VERSION.unavailable"

if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    echo "install_llama_cpp.sh: $PY is not a Python interpreter; pass one (e.g. .venv/bin/python)" >&2
    exit 2
fi
mkdir -p "$CACHE"

unavailable() {  # the tests read this file to say why they skip
    echo "llama-cpp-python $VERSION not installed: $1" | tee "$REASON_FILE"
    exit 0
}

installed_version() {
    "$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true
}

if [ "$(installed_version)" = "$VERSION" ]; then
    echo "llama-cpp-python $VERSION already installed in $PY"
    rm -f "$REASON_FILE"
    exit 0
fi

# Two `make test` runs at once must not compile twice into the same folder.
exec 9>"$CACHE/.llama_cpp_python.lock"
command -v flock >/dev/null 2>&1 && flock 9

wheel() { ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1; }

if [ -z "$(wheel)" ]; then
    command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 \
        || unavailable "no C compiler (install gcc and g++, e.g. apt-get install build-essential, then rerun $0)"
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 \
        || unavailable "no C++ compiler (install g++, e.g. apt-get install build-essential, then rerun $0)"

    # A plain CPU build: no BLAS, GPU or multimodal (mtmd) library, nothing the tests do not use.
    # GGML_NATIVE=OFF compiles for AVX2-class x86 instead of this exact CPU, so a cached wheel still
    # runs if the folder outlives the machine it was built on.
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_VULKAN=OFF \
-DGGML_METAL=OFF -DGGML_OPENCL=OFF -DGGML_SYCL=OFF -DGGML_RPC=OFF -DLLAVA_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
    export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
    export FORCE_CMAKE=1
    log="$CACHE/llama_cpp_python-$VERSION.build.log"
    echo "building llama-cpp-python $VERSION (CPU only, $JOBS jobs; tens of minutes on 2 cores), log: $log"
    started=$(date +%s)
    scratch="$(mktemp -d "$CACHE/.build.XXXXXX")"
    trap 'rm -rf "$scratch"' EXIT
    if ! "$PY" -m pip download -q --no-deps --no-binary :all: -d "$scratch" "llama-cpp-python==$VERSION" >"$log" 2>&1; then
        tail -n 5 "$log"
        unavailable "the source package could not be fetched from the package index (see $log)"
    fi
    if ! "$PY" -m pip wheel --no-deps -w "$scratch" "$scratch"/llama_cpp_python-"$VERSION".tar.gz >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "install_llama_cpp.sh: building llama-cpp-python $VERSION failed; the full log is $log" >&2
        exit 1
    fi
    mv "$scratch"/llama_cpp_python-"$VERSION"-*.whl "$CACHE"/
    echo "built $(basename "$(wheel)") in $(( $(date +%s) - started )) s"
fi

# Its dependencies (numpy, jinja2, diskcache, typing-extensions) are light; pip keeps the ones already there.
"$PY" -m pip install -q "$(wheel)"
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed from', '$(wheel)')"
rm -f "$REASON_FILE"
