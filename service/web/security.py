"""Content-Security-Policy for every HTML page the service sends (the web page at `/`, the API docs).

The pages may load only the service's own files, and run an inline script only when its hash is in the
policy; the hashes are taken from the page as sent, so a page that changes (FastAPI's docs page, for one)
never needs a hand-kept hash. Pure ASGI, and only HTML bodies are held back to read them; every other
response streams through untouched.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\ssrc\s*=)[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
_INLINE_STYLE = re.compile(rb"<style[^>]*>(.*?)</style\s*>", re.IGNORECASE | re.DOTALL)

# Besides the CSP (nosniff is on every response, in service/api/middleware.py): no referrer leaks a page's query.
_OTHER_HEADERS = {"Referrer-Policy": "no-referrer"}


def content_security_policy(html: bytes) -> str:
    """Own resources only; images also from data: and blob: URLs (the page shows the chosen file)."""
    scripts = " ".join(["'self'", *_hashes(_INLINE_SCRIPT, html)])
    styles = " ".join(["'self'", *_hashes(_INLINE_STYLE, html)])
    return (f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src 'self' data: blob:; "
            "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _hashes(pattern: re.Pattern[bytes], html: bytes) -> list[str]:
    digests = (hashlib.sha256(match.group(1)).digest() for match in pattern.finditer(html))
    return [f"'sha256-{base64.b64encode(digest).decode()}'" for digest in dict.fromkeys(digests)]


class HtmlSecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held_start: Message | None = None
        body: list[bytes] = []

        async def send_with_policy(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start" and _is_html(message):
                held_start = message  # sent once the whole page is known
                return
            if held_start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = b"".join(body)
            headers = MutableHeaders(scope=held_start)
            headers["Content-Security-Policy"] = content_security_policy(page)
            for name, value in _OTHER_HEADERS.items():
                headers[name] = value
            await send(held_start)
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_with_policy)


def _is_html(start: Message) -> bool:
    return Headers(raw=start.get("headers", [])).get("content-type", "").startswith("text/html")
