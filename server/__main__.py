"""The ``llamaserve`` command (also ``python -m server``): flags -> settings -> uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any, get_args

import uvicorn
from pydantic import ValidationError

from server.app import create_app
from server.errors import LlamaserveError
from server.settings import Settings, load

log = logging.getLogger("server")

# llamafile's and llama.cpp's short flags, for people who arrive with their habits.
SHORT_FLAGS = {
    "model": ["-m"],
    "ctx_size": ["-c"],
    "parallel": ["-np"],
    "threads": ["-t"],
    "batch_size": ["-b"],
    "n_gpu_layers": ["-ngl"],
    "alias": ["-a"],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamaserve",
        description="OpenAI-compatible server for GGUF models, with continuous batching over llama.cpp.",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML config file (default: none)")
    for name, field in Settings.model_fields.items():
        flags = [*SHORT_FLAGS.get(name, []), "--" + name.replace("_", "-")]
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} (default: {default})"
        if field.annotation is bool:
            parser.add_argument(*flags, dest=name, action="store_const", const=True, default=None, help=help_text)
        elif name == "api_keys":
            parser.add_argument("--api-key", dest=name, action="append", default=None, help=help_text)
        else:
            choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
            parser.add_argument(*flags, dest=name, default=None, choices=choices or None, help=help_text)
    return parser


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _open_browser_later(url: str) -> None:
    def go() -> None:
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            log.info("could not open a browser; the UI is at %s", url)

    threading.Timer(1.5, go).start()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        settings = load(cli, args.config)
    except (ValidationError, OSError, ValueError) as exc:
        sys.stderr.write(f"llamaserve: bad configuration: {exc}\n")
        return 2
    configure_logging(settings)
    url = f"http://{settings.host}:{settings.port}/"
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform == "darwin"
    if not settings.no_browser and has_display:
        _open_browser_later(url)
    log.info("llamaserve on %s", url)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
    except LlamaserveError as exc:
        sys.stderr.write(f"llamaserve: {exc.message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
