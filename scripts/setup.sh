#!/usr/bin/env bash
# One-command set-up, safe to re-run: Debian packages (only the missing ones), the Python virtual env
# (Debian's python3 with its torch), the C++ build and install, and the Python package in the env.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake git
  libtorch-dev libopencv-dev libeigen3-dev libfmt-dev nlohmann-json3-dev libcli11-dev libpugixml-dev catch2
  # Debian's torch does matrix products through libblas.so.3; without OpenBLAS that is the reference
  # BLAS, about 7x slower for transformer layers (measured on the ViT classifier's training step).
  libopenblas0-openmp
  pybind11-dev python3-dev python3-venv python3-pip python3-setuptools python3-wheel
  python3-numpy python3-pytest python3-torch python3-torchvision python3-opencv python3-tqdm
  jupyter-nbconvert python3-nbformat python3-ipykernel python3-matplotlib python3-sklearn python3-pil
  # bloodcv serve: the web application, its database servers, and the real-browser test
  python3-fastapi python3-pydantic python3-uvicorn python3-sqlalchemy python3-jinja2 python3-multipart python3-httpx
  python3-psycopg2
  postgresql chromium chromium-driver python3-selenium
  # whole slides: OpenSlide (C library and its tools), libvips to make test slides, Dask for many slides
  libopenslide-dev openslide-tools libvips-tools python3-dask python3-distributed
  # scripts/fuzz.sh: clang and its libFuzzer runtime (libclang_rt.fuzzer, with the sanitizer runtimes)
  clang libclang-rt-14-dev
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV from /usr/bin/python3 (with Debian's torch)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

JOBS=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
cmake -S . -B build -DPython_EXECUTABLE="$PWD/$VENV/bin/python" -DCMAKE_INSTALL_PREFIX="$PWD/build/install" >/dev/null
cmake --build build -j "$JOBS"
cmake --install build >/dev/null
# Notebooks run in the env: its own "python3" kernel (found before the system's).
# (-Xfrozen_modules=off: otherwise the debugger bundled with ipykernel prints a warning about frozen modules.)
[ -f "$VENV/share/jupyter/kernels/python3/kernel.json" ] ||
  "$VENV/bin/python" -Xfrozen_modules=off -m ipykernel install --prefix "$PWD/$VENV" --name python3 >/dev/null
# The extension is already built in build/: pip only copies it into the env.
"$VENV/bin/python" -m pip install --quiet --no-build-isolation --no-deps --no-index . 
echo "setup: done (C++ installed in build/install, Python package in $VENV)"
