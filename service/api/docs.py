"""/docs: Swagger UI served from the files the `fastapi-offline` package ships (Swagger UI 5, which reads
the OpenAPI 3.1 documents FastAPI writes), so the page works offline and behind firewalls (FastAPI's
default page loads its script and styles from a CDN).

The application is created with `docs_url=None, redoc_url=None`; `install_docs` adds this page instead.
"""

from __future__ import annotations

import importlib.resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

SWAGGER_UI_FILES = importlib.resources.files("fastapi_offline") / "static"

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    title = f"{app.title} API"
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_URL, StaticFiles(directory=str(SWAGGER_UI_FILES)), name="docs-assets")
