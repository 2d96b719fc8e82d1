"""GET / (the page), its assets under /ui/, and the drawing style the page shares with the annotated images."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service import errors
from service.tasks import drawing
from service.web import ASSET_PREFIX

# The page's files, by name; nothing else under /ui/ is served, so no path ever reaches the file system.
_ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# Revalidate every time: the files are tiny and a stale script after an upgrade would call the API wrongly.
_NO_STALE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


class DrawingStyle(BaseModel):
    """What the page needs to draw exactly as `format=png|jpeg` does: colours by class id and blending."""

    colors: list[str] = Field(description="class colour by class id modulo the list's length, #RRGGBB")
    text_colors: list[str] = Field(description="the readable text colour on each class colour, #RRGGBB")
    mask_alpha: float = Field(description="opacity of instance masks and class maps")
    panel_alpha: float = Field(description="opacity of the dark panel behind top-k bars and the legend")
    unpainted_labels: list[str] = Field(description="semantic classes left uncoloured (and out of the legend)")


@router.get("/", response_class=Response)
def page() -> Response:
    return Response(_static("index.html"), media_type="text/html; charset=utf-8", headers=_NO_STALE)


@router.get(ASSET_PREFIX + "style.json", response_model=DrawingStyle)
def style() -> DrawingStyle:
    return drawing_style()


@router.get(ASSET_PREFIX + "{name}", response_class=Response)
def asset(name: str) -> Response:
    if name not in _ASSETS:
        raise errors.StrideError(404, "not_found", f"no page asset named '{name}'; the page is at /")
    return Response(_static(name), media_type=_ASSETS[name], headers=_NO_STALE)


def drawing_style() -> DrawingStyle:
    colors = list(drawing.PALETTE)
    text = [_hex(drawing.text_color_on(drawing.hex_to_rgb(color))) for color in colors]
    return DrawingStyle(colors=colors, text_colors=text, mask_alpha=drawing.MASK_ALPHA,
                        panel_alpha=drawing.PANEL_ALPHA, unpainted_labels=list(drawing.UNPAINTED_LABELS))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


@lru_cache(maxsize=len(_ASSETS) + 1)
def _static(name: str) -> bytes:
    return resources.files("service.web").joinpath("static", name).read_bytes()
