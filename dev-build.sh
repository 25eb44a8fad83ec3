#!/usr/bin/env bash
# Developer build: compiles the native core into build/dev and drops _core*.so (and the CUDA
# plugin when built) into python/fastmlp, so `PYTHONPATH=python pytest` runs the working tree
# without reinstalling. Pass extra CMake arguments, e.g. -DFASTMLP_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")"
cmake -S . -B build/dev -DCMAKE_BUILD_TYPE=Release -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "$@" >/dev/null
cmake --build build/dev -j"$(nproc)"
# Copy, then rename over the old file: a test process that has the old library mapped keeps
# reading intact pages (cp would rewrite them under it and crash it).
for f in build/dev/_core*.so build/dev/_build_config.py build/dev/libfastmlp_cuda.so; do
  [ -e "$f" ] || continue
  cp "$f" "python/fastmlp/.$(basename "$f").new" && mv -f "python/fastmlp/.$(basename "$f").new" "python/fastmlp/$(basename "$f")"
done
