#!/usr/bin/env bash
# Installs a real Triton server for the tests (pytest -m triton), into .cache/triton or $1:
#  - tritonserver with its python backend, from the nvidia-pytriton wheel (no ONNX Runtime backend);
#  - a Python environment for the python backend's stub: numpy<2 (the stub's ABI) and onnxruntime,
#    which runs the bundle's model.onnx in the tests' stand-in for the ONNX Runtime backend.
# Needs pip access to PyPI; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${1:-.cache/triton}"
python="${PYTHON:-python3}"
pytriton_version=0.7.0
onnxruntime_version="$("$python" -c 'from importlib.metadata import version; print(version("onnxruntime"))' 2>/dev/null || echo 1.32.0)"
mkdir -p "$home"
home="$(cd "$home" && pwd)"
if [ ! -x "$home/pytriton/pytriton/tritonserver/bin/tritonserver" ]; then
    "$python" -m pip install --quiet --no-deps --target "$home/pytriton" "nvidia-pytriton==$pytriton_version"
fi
if [ ! -x "$home/stubenv/bin/python" ]; then
    "$python" -m venv "$home/stubenv"
fi
"$home/stubenv/bin/pip" install --quiet "numpy==1.26.4" "onnxruntime==$onnxruntime_version"
server="$home/pytriton/pytriton/tritonserver"
stub_python="$("$home/stubenv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
rm -rf "$home/backends"
mkdir -p "$home/backends"
cp -r "$server/backends/python" "$home/backends/python"
cp "$server/python_backend_stubs/$stub_python/triton_python_backend_stub" "$home/backends/python/"
echo "tritonserver installed in $home"
