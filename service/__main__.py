"""`python -m service [serve|inspect] ...` (`stride-serve`): serve the models, or explain one model file.

serve (the default): every model in STRIDE_MODELS_DIR with uvicorn; options override STRIDE_* settings.
inspect FILE.onnx: its inputs and outputs, the family Stride recognises, the contract it will apply, and,
when the file cannot be served as it is, a description template to complete (`--write` saves it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

COMMANDS = ("serve", "inspect")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in (*COMMANDS, "-h", "--help"):
        args.insert(0, "serve")  # serve is the default command, its options allowed without it
    parsed = _parser().parse_args(args)
    return int(parsed.run(parsed) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(title="commands", metavar="{serve,inspect}")
    serve = commands.add_parser("serve", help="serve every model in the models directory (default)",
                                description="Serve every model in STRIDE_MODELS_DIR over HTTP (and gRPC). "
                                "Every setting is a STRIDE_* environment variable (README, Settings); these "
                                "options override the matching ones.")
    serve.add_argument("--host", help="address to bind (STRIDE_HOST)")
    serve.add_argument("--port", type=int, help="HTTP port (STRIDE_PORT)")
    serve.add_argument("--models-dir", type=Path, help="directory of model files (STRIDE_MODELS_DIR)")
    serve.add_argument("--workers", type=int, help="server processes sharing the port (STRIDE_WORKERS)")
    serve.set_defaults(run=_serve)
    inspect = commands.add_parser("inspect", help="show how Stride reads a model file; write a description",
                                  description="Print a model file's inputs and outputs, the family Stride "
                                  "recognises, the contract it will apply, and a description template to "
                                  "complete when it cannot be served as it is.")
    inspect.add_argument("file", type=Path, help="the .onnx file")
    inspect.add_argument("--write", action="store_true",
                         help="write the template beside the file as NAME.yaml (never overwrites)")
    inspect.set_defaults(run=_inspect)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.config import Settings
    from service.logs import configure_logging
    from service.server import DrainingServer, uvicorn_config
    from service.workers import Supervisor, WorkersRefused

    overrides = {key: value for key, value in (("host", args.host), ("port", args.port),
                                                ("models_dir", args.models_dir), ("workers", args.workers))
                 if value is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    if settings.workers > 1:  # each worker builds its own app: this process only supervises them
        try:
            return Supervisor(settings, overrides).run()
        except WorkersRefused as exc:
            print(f"stride: {exc}", file=sys.stderr)
            return 2
    app = create_app(settings)
    DrainingServer(uvicorn_config(app, settings), app, settings.drain_delay_s).run()
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from service.inspect import inspect_file

    return inspect_file(args.file, write=args.write, out=sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
