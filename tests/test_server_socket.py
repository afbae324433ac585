"""The in-loop server's socket: accepted connections must have TCP_NODELAY, or every response
(headers, then body: two writes) waits for the client's delayed ACK under back-to-back load."""

from __future__ import annotations

import asyncio
import socket

from server.app import listening_socket


async def test_accepted_connections_have_tcp_nodelay() -> None:
    nodelay: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("socket")
        nodelay.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    with listening_socket("127.0.0.1") as sock:
        server = await asyncio.start_server(accept, sock=sock)
        async with server:
            reader, writer = await asyncio.open_connection(*sock.getsockname())
            assert await asyncio.wait_for(reader.read(), 10) == b""  # accepted, then closed
            writer.close()
    assert nodelay and nodelay[0] != 0
