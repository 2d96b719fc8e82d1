"""GET / and its assets over HTTP: served from the package, open without an API key, under a strict CSP."""

from __future__ import annotations

import base64
import hashlib
import tomllib
from collections.abc import Callable
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.tasks.drawing import PALETTE, hex_to_rgb, text_color_on
from tests.conftest import REPO

PAGE_FILES = ["/", "/ui/app.js", "/ui/app.css", "/ui/style.json"]


class _Page(HTMLParser):
    """The page's external resources and the text of its inline scripts, as a browser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.resources: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and "src" not in named:
            self._in_inline_script = True
            self.inline_scripts.append("")
        for key in ("src", "href"):
            if named.get(key):
                self.resources.append(str(named[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts[-1] += data


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def directives(policy: str) -> dict[str, list[str]]:
    parsed = [part.split() for part in policy.split(";") if part.strip()]
    return {words[0]: words[1:] for words in parsed}


@pytest.mark.parametrize(("path", "media_type"), [
    ("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css"),
    ("/ui/style.json", "application/json"),
])
def test_the_page_and_its_assets_are_served(client: TestClient, path: str, media_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content


def test_the_page_loads_only_its_own_files(client: TestClient) -> None:
    page = parse(client.get("/").text)
    loaded = [r for r in page.resources if not r.startswith("data:")]
    assert sorted(loaded) == ["/ui/app.css", "/ui/app.js"]
    assert page.inline_scripts == []  # so its CSP needs no hash and no 'unsafe-inline'


@pytest.mark.parametrize("name", ["nothing.js", "..%2Fapp.py", "style.css", ""])
def test_no_other_file_is_served_under_the_asset_path(client: TestClient, name: str) -> None:
    response = client.get(f"/ui/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_drawing_style_is_the_drawing_modules_palette(client: TestClient) -> None:
    style = client.get("/ui/style.json").json()
    assert style["colors"] == list(PALETTE)
    assert [hex_to_rgb(c) for c in style["text_colors"]] == [text_color_on(hex_to_rgb(c)) for c in PALETTE]
    assert 0 < style["mask_alpha"] < 1 and style["unpainted_labels"] == ["background"]


def test_the_page_has_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/")
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_docs_page_may_run_exactly_its_own_inline_scripts(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    page = parse(response.text)
    policy = directives(response.headers["content-security-policy"])
    hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
              for s in page.inline_scripts}
    assert set(policy["script-src"]) == {"'self'"} | hashes
    assert all(not r.startswith(("http:", "https:", "//")) for r in page.resources), page.resources


@pytest.mark.parametrize("path", ["/v1/models", "/ui/style.json", "/health/live"])
def test_json_answers_carry_no_page_policy(client: TestClient, path: str) -> None:
    assert "content-security-policy" not in client.get(path).headers


@pytest.mark.parametrize("path", PAGE_FILES)
def test_the_page_opens_without_a_key_when_keys_are_set(make_client: Callable[..., TestClient],
                                                        tiny_model_dir: Path, path: str) -> None:
    client = make_client(tiny_model_dir, api_key=["secret"])
    assert client.get(path).status_code == 200
    assert client.get("/v1/models").status_code == 401  # the API itself stays closed
    assert client.get("/v1/models", headers={"X-API-Key": "secret"}).status_code == 200


def test_the_packaging_ships_every_page_file() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = config["service.web"]
    static = REPO / "service" / "web" / "static"
    files = [p.relative_to(static.parent).as_posix() for p in static.iterdir()]
    assert files
    unshipped = [f for f in files if not any(fnmatch(f, pattern) for pattern in patterns)]
    assert not unshipped
