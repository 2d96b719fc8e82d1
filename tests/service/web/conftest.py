"""A real server (`python -m service`) with the bundled models the page is tried on, and a browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.test_server_process import start_server
from tests.service.web.browser import link_models


def stop(process) -> None:  # type: ignore[no-untyped-def]
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="package")
def page_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="package")
def bundled_server(page_models_dir: Path) -> Iterator[str]:
    base, process = start_server(page_models_dir, STRIDE_DRAIN_DELAY_S="0", STRIDE_ACCESS_LOG="false")
    try:
        yield base
    finally:
        stop(process)
