"""Fixtures for the deployment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import create_app
from service.config import Settings


@pytest.fixture(scope="session")
def app_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The HTTP paths the service really serves, from the app's own OpenAPI document."""
    empty = tmp_path_factory.mktemp("no-models")
    app = create_app(Settings(models_dir=Path(empty)))
    return set(app.openapi()["paths"])
