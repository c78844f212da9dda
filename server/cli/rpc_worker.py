"""``llamaserve rpc-worker``: serve this machine's CPU or GPU to a head over llama.cpp's RPC protocol.

The RPC protocol has no authentication, and anyone who can reach the port can run code on the
worker, so it binds 127.0.0.1 unless told otherwise, and any other address needs
``--allow-remote`` (with a warning naming the risk). The server call blocks for good; SIGTERM
and Ctrl+C end the process (their default action: the C call never hands control back).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys

from server.api.security import is_loopback
from server.cli.preflight import EXIT_BAD_CONFIG
from server.engine.base import EngineError
from server.ops.logs import configure_logging

log = logging.getLogger("server")

RISK = (
    "the RPC protocol has no authentication: anyone who can reach this port can run code on this machine. "
    "Expose it only on a private network or through a tunnel, with a firewall (or a Kubernetes "
    "NetworkPolicy) that lets only the head in."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llamaserve rpc-worker",
        description="Serve this machine's CPU or GPU to a llamaserve head (--rpc HOST:PORT) over llama.cpp RPC.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=50052, help="port to bind (default: %(default)s)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="ggml device to serve, e.g. CPU or CUDA0 (default: the best)")
    p.add_argument("--cache", default=None, metavar="DIR", help="keep received tensors here, so a head restart "
                   "does not send the weights again (default: none)")  # fmt: skip
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address (see the risk)")
    return p


def _fail(message: str, code: int = EXIT_BAD_CONFIG) -> int:
    sys.stderr.write(f"llamaserve rpc-worker: {message}\n")
    return code


def _port_free(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("info", "text")
    if not 0 < args.port < 65536:
        return _fail(f"--port {args.port} is not a port number.")
    if not is_loopback(args.host):
        if not args.allow_remote:
            return _fail(f"refusing to listen on {args.host}: {RISK} Pass --allow-remote to do it anyway.")
        log.warning("rpc-worker listening on %s: %s", args.host, RISK)
    busy = _port_free(args.host, args.port)
    if busy is not None:
        return _fail(busy + ".")
    from server.engine.llama.rpc import rpc_supported, start_server

    if not rpc_supported():
        return _fail("this llama.cpp build has no RPC backend; `make install` builds one with it.")
    # Python's own SIGINT handler could never run inside the blocking C call: let the signal end us.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    endpoint = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        start_server(endpoint, threads=args.threads or os.cpu_count() or 1, device=args.device, cache_dir=args.cache)
    except EngineError as exc:
        return _fail(str(exc))
    return _fail(f"the RPC server on {endpoint} stopped (it could not bind, or found no device).", 1)
