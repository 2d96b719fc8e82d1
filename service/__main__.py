"""`python -m service` / `stride-serve`: serve every model in STRIDE_MODELS_DIR with uvicorn."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.config import get_settings
from service.logs import configure_logging
from service.server import DrainingServer


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our JSON logging
        access_log=False,  # Stride writes its own access line, with the request id
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.request_timeout_s + 5,
    )
    DrainingServer(config, app, settings.drain_delay_s).run()


if __name__ == "__main__":
    main()
