"""Viewer sockets: replies leave at once (no Nagle delay between a header and its payload)."""

from __future__ import annotations

import socket

from pyrelayd.server.live import ViewerSocket


async def test_viewer_sockets_disable_nagle() -> None:
    # With Nagle on, GET_PACKET's payload would wait for the ACK of its header, which a
    # viewer delays by ~40 ms: every packet served live would pay that.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        try:
            viewer = ViewerSocket(accepted)
            assert viewer.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            await viewer.send(b"header", more=True)
            await viewer.send(b"payload")
            assert client.recv(13, socket.MSG_WAITALL) == b"headerpayload"
        finally:
            client.close()
            accepted.close()
