#!/usr/bin/env bash
# Builds the CPU build image offline (no network inside the build), from:
#  - a base image with python3.11: imported from a debootstrap root filesystem when it is not there yet
#    (the Debian mirror of /etc/apt/sources.list.d/debian.sources; Docker Hub is not needed);
#  - a wheelhouse of builder's wheel with its `export` extra (the image runs the export stage: torch, ONNX,
#    ONNX Runtime) and their dependencies at exactly the versions of the Python environment running this
#    script (so the image's toolchain equals the host's; that environment needs the extra installed too).
# Usage: containers/cpu/build.sh [IMAGE_TAG]    (default model-bundle-builder-cpu:VERSION)
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
version="$("$python" -c 'import builder; print(builder.__version__)')"
tag="${1:-model-bundle-builder-cpu:$version}"
base="${BASE:-builder-base:bookworm}"
docker="$(command -v docker)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! "$docker" image inspect "$base" >/dev/null 2>&1; then
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    echo "base image $base: debootstrap bookworm from ${mirror:-http://deb.debian.org/debian}" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1,passwd \
        bookworm "$work/rootfs" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    tar -C "$work/rootfs" -c . | "$docker" import - "$base" >/dev/null
    rm -rf "$work/rootfs"
fi

context="$work/context"
mkdir -p "$context/wheels"
cp containers/cpu/Dockerfile "$context/Dockerfile"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$context/wheels" .
# builder's dependencies and its export toolchain, pinned to this environment's versions
"$python" -m pip freeze --exclude-editable | grep -v -i '^model-bundle-builder' > "$work/pins.txt"
wheel="$(ls "$context/wheels"/model_bundle_builder-*.whl)"
"$python" -m pip download --quiet --only-binary=:all: --dest "$context/wheels" -c "$work/pins.txt" "$wheel[export]"
echo "model-bundle-builder[export]==$version" > "$context/wheels/requirements.txt"
DOCKER_BUILDKIT=0 "$docker" build --quiet --network=none --build-arg "BASE=$base" -t "$tag" "$context" >/dev/null
echo "$tag"
