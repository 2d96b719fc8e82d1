"""The web page at `/`: try any loaded model on an image and see its answer drawn (static files, no build)."""

ASSET_PREFIX = "/ui/"  # the page's own files (and its drawing style): open without an API key, like `/`
