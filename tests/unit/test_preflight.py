"""The listening socket the server binds before the model loads (server.cli.preflight.bind_socket)."""

from __future__ import annotations

import asyncio
import socket

from server.cli.preflight import bind_socket


def test_connections_accepted_by_the_event_loop_send_without_nagle_delay() -> None:
    # uvicorn serves on this socket through asyncio; each accepted connection must have Nagle's
    # algorithm off, or a keep-alive client sees a stream's first chunks held back until its
    # delayed ACK (~40 ms on Linux).
    async def accepted_nodelay() -> int:
        sock = bind_socket("127.0.0.1", 0)
        sock.listen()
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn: socket.socket = writer.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                return await asyncio.wait_for(seen, 10)
            finally:
                writer.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_the_listener_itself_has_nagle_off_for_servers_that_accept_directly() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
