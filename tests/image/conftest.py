"""The image tests start a Docker engine and build the image (minutes, root, apt packages):
they run with ``make test-image``, not in ``make test``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.image.docker import Docker, Unavailable, build_image

if not os.environ.get("RUN_IMAGE_TESTS"):
    collect_ignore_glob = ["test_*.py"]

IMAGE = "taskflow:test"


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    try:
        engine = Docker()
    except Unavailable as exc:
        if os.environ.get("REQUIRE_DOCKER"):
            pytest.fail(f"REQUIRE_DOCKER is set but no Docker engine: {exc}")
        pytest.skip(f"no Docker engine can be started here: {exc}")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def image(docker: Docker) -> dict:
    """The image's ``docker image inspect`` data."""
    try:
        return build_image(docker, IMAGE)
    except Unavailable as exc:
        if os.environ.get("REQUIRE_DOCKER"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
