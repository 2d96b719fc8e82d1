"""`python -m service` / `stride-serve`: serve every model in STRIDE_MODELS_DIR with uvicorn."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.config import get_settings
from service.logs import configure_logging


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our JSON logging
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
