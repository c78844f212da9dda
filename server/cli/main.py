"""The ``llamaserve`` command (also ``python -m server``): flags -> settings -> checks -> uvicorn.

Flags are generated from the fields of :class:`~server.settings.Settings` (and of
:class:`~server.prompt_mode.PromptOptions` for ``-p``), so every setting has a flag whose
``--help`` line shows its default. Before anything is allocated, :func:`preflight` checks
each model file, the context size, the memory the KV cache will need, the state directory and the port, so
bad configuration ends in one paragraph on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import types
import typing
import webbrowser
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from server import __version__
from server.api.security import check_exposure
from server.cli.preflight import EXIT_BAD_CONFIG, bind_socket, check_state, preflight, rpc_built_in
from server.cli.prompt import PromptOptions
from server.engine.base import EngineError
from server.engine.llama.model_files import format_bytes
from server.errors import LlamaserveError
from server.ops.logs import configure_logging
from server.settings import ENV_PREFIX, FILE_ONLY, Settings, load

log = logging.getLogger("server")

# llamafile's and llama.cpp's short flags, for people who arrive with their habits.
SHORT_FLAGS = {
    "model": ["-m"],
    "alias": ["-a"],
    "ctx_size": ["-c"],
    "parallel": ["-np"],
    "threads": ["-t"],
    "batch_size": ["-b"],
    "n_gpu_layers": ["-ngl"],
    "prompt": ["-p"],
    "n_predict": ["-n"],
}

EPILOG = f"""\
Settings come from, lowest precedence first: the built-in defaults shown above, a TOML
config file (--config FILE or {ENV_PREFIX}CONFIG; config/default.toml lists every key),
{ENV_PREFIX}<NAME> environment variables (e.g. {ENV_PREFIX}CTX_SIZE=4096; lists as JSON),
and these flags. Several models by name: [[models]] tables in the config file.
Bad configuration exits with code 2. One model over several machines: `llamaserve rpc-worker --help`
on each worker, then --rpc HOST:PORT,... here{{rpc_note}}.
"""


def _flag_name(name: str, annotation: Any) -> str:
    # A list field takes one value per flag: --api-key A --api-key B.
    if get_origin(annotation) is list and name.endswith("s"):
        name = name[:-1]
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` -> ``str``."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin is list:
        return _base_type(get_args(annotation)[0])
    return annotation


def _shown_default(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if default is None or default == []:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def _add_fields(group: argparse._ArgumentGroup, model: type[BaseModel], skip: frozenset[str]) -> None:
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        annotation = field.annotation
        flags = [*SHORT_FLAGS.get(name, []), _flag_name(name, annotation)]
        description = field.description or name.replace("_", " ")
        if get_origin(annotation) is list and "repeatable" not in description:
            description += " (repeatable)"
        # A description that explains its default itself ("default: all cores") keeps its words.
        if "(default:" not in description:
            description += f" (default: {_shown_default(field)})"
        help_text = description.replace("%", "%%")
        base = _base_type(annotation)
        if base is bool:
            if name.startswith("no_"):
                group.add_argument(*flags, dest=name, action="store_const", const=True, default=None, help=help_text)
            else:
                group.add_argument(
                    *flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
                )
        elif get_origin(annotation) is list:
            group.add_argument(
                *flags, dest=name, action="append", default=None, metavar=name.upper().removesuffix("S"),
                help=help_text,
            )  # fmt: skip
        elif get_origin(base) is Literal:
            group.add_argument(
                *flags, dest=name, default=None, choices=[str(c) for c in get_args(base)], help=help_text
            )
        else:
            kind = base if base in (int, float) else str
            group.add_argument(*flags, dest=name, type=kind, default=None, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamaserve",
        description="OpenAI-compatible server for GGUF models, with continuous batching over llama.cpp.",
        epilog=EPILOG.format(rpc_note="" if rpc_built_in() else " (NOT available: this llama.cpp has no RPC)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="TOML config file (default: none)")
    parser.add_argument("--version", action="version", version=f"llamaserve {__version__}")
    _add_fields(parser.add_argument_group("server"), Settings, FILE_ONLY)
    _add_fields(parser.add_argument_group("one-shot completion, no server"), PromptOptions, frozenset())
    return parser


# ---- running ----------------------------------------------------------------------------------


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_browser_later(url: str) -> None:
    def go() -> None:
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            log.info("could not open a browser; the UI is at %s", url)

    timer = threading.Timer(1.5, go)
    timer.daemon = True
    timer.start()


def browser_url(host: str, port: int) -> str:
    """The address a browser on this machine can open: a wildcard bind is reached by loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(settings: Settings, sock: socket.socket) -> None:
    import uvicorn

    from server.api.app import create_app
    from server.api.shutdown import serve as serve_gracefully

    host, port = sock.getsockname()[:2]
    url = browser_url(host, port)
    log.info("llamaserve %s listening on %s", __version__, url)
    if not settings.no_browser and _has_display():
        _open_browser_later(url)
    # log_config=None: uvicorn keeps the handlers configure_logging installed.
    config = uvicorn.Config(create_app(settings), log_config=None, log_level=settings.log_level)
    # SIGTERM/Ctrl+C drain first (503s, running streams finish or get a final error event), then exit 0.
    serve_gracefully(config, sockets=[sock])


def _fail(message: str) -> int:
    sys.stderr.write(f"llamaserve: {message}\n")
    return EXIT_BAD_CONFIG


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rpc-worker"]:
        from server.cli.rpc_worker import main as rpc_worker

        return rpc_worker(argv[1:])
    args = vars(build_parser().parse_args(argv))
    config_file: Path | None = args.pop("config")
    prompt_values = {k: args.pop(k) for k in PromptOptions.model_fields}
    # Until the settings are known: warnings only, and on stderr, where -p keeps every log line.
    configure_logging("warning", "text")
    try:
        settings = load(args, config_file)
        configure_logging(settings.log_level, settings.log_format)
        if prompt_values["prompt"] is not None:
            return _prompt(settings, prompt_values)
        if any(v is not None for v in prompt_values.values()):
            return _fail("-n, --temp, --seed and --chat apply to a one-shot completion: add -p TEXT.")
        check_exposure(settings)  # no open, keyless server by accident
        settings, checked = preflight(settings)
        state_file = check_state(settings)  # the server's alone: -p keeps no state
        sock = bind_socket(settings.host, settings.port)
    except LlamaserveError as exc:
        return _fail(exc.message)
    if not rpc_built_in():
        log.warning("this llama.cpp build has no RPC backend: --rpc and rpc-worker are unavailable (make install)")
    for c in checked:
        s = c.settings
        log.info(
            "model %s: %s, %d slots x %d context tokens, KV cache about %s",
            s.alias, s.model, s.parallel, s.ctx_size, format_bytes(c.kv_bytes),
        )  # fmt: skip
    log.info("stored responses: %s", state_file or "in memory, lost at exit (--state-dir :memory:)")
    try:
        serve(settings, sock)
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()
    return 0


def _prompt(settings: Settings, values: dict[str, Any]) -> int:
    from pydantic import ValidationError

    from server.cli.prompt import run_prompt

    try:
        options = PromptOptions.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        return _fail(f"Invalid value for --{str(err['loc'][0]).replace('_', '-')}: {err['msg']}.")
    if settings.models:
        return _fail("-p completes with one model: pass -m PATH (the config file's [[models]] serve a server).")
    settings, _ = preflight(settings.model_copy(update={"parallel": 1}))
    try:
        run_prompt(settings, options)
    except KeyboardInterrupt:
        return 130
    except EngineError as exc:
        sys.stderr.write(f"llamaserve: the model failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
