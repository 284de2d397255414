"""Fixtures of the deployment tests: the image built as the Dockerfile builds it (once a session)
and each overlay rendered (once a session)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.kube import KUBERNETES, render
from tests.deploy.pod import Image, build_image, image_folder


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    with image_folder() as folder:
        yield build_image(folder)


_RENDERED: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture
def rendered():
    """``rendered("trial")``: the objects ``kubectl kustomize`` makes of an overlay (or ``base``)."""
    def of(name: str) -> list[dict[str, Any]]:
        if name not in _RENDERED:
            _RENDERED[name] = render(KUBERNETES / name if name == "base" else KUBERNETES / "overlays" / name)
        return _RENDERED[name]
    return of
