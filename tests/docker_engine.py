"""The Docker engine and the CPU build image the docker tests use: skipped without them, a failure under CI."""
from __future__ import annotations

import os

import pytest

import builder

IMAGE = os.environ.get("BUILDER_TEST_IMAGE", f"model-bundle-builder-cpu:{builder.__version__}")


def skip_or_fail(message: str):
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def engine_with_image(image: str = IMAGE):
    """A docker client that answered, on an engine that holds `image` (containers/cpu/build.sh builds it)."""
    from builder.core.errors import UserError
    from builder.runners.docker_runner import engine, image_info

    try:
        client = engine()
    except UserError as e:
        skip_or_fail(f"no Docker engine: {e.one_line()}")
    if not image_info(client, image):
        skip_or_fail(f"no image {image}: run containers/cpu/build.sh {image}")
    return client
