"""API keys on gRPC: the same keys as HTTP (STRIDE_API_KEY), sent as `x-api-key` or `authorization: Bearer`
metadata, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def offered_key(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The key a call carries: `x-api-key`, else an `authorization: Bearer <key>` token; '' when none."""
    values = {key.lower(): value for key, value in metadata if isinstance(value, str)}
    offered = values.get("x-api-key", "")
    scheme, _, token = values.get("authorization", "").partition(" ")
    if not offered and scheme.lower() == "bearer":
        offered = token.strip()
    return offered


def is_authorised(offered: str, keys: list[bytes]) -> bool:
    if not offered:
        return False
    # Compare with every key, so timing reveals neither a key nor which one matched.
    matches = [hmac.compare_digest(offered.encode(), key) for key in keys]
    return any(matches)
