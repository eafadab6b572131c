"""A unix-socket proxy to the Docker engine, so a test can drop the engine connection.

`python tests/engine_proxy.py LISTEN [UPSTREAM]` forwards every connection on the socket
LISTEN to UPSTREAM (default /var/run/docker.sock). Killing the proxy closes every
connection at once, as a dying engine or a cut network would.
"""

from __future__ import annotations

import selectors
import socket
import sys
import threading


def pipe(a: socket.socket, b: socket.socket) -> None:
    with a, b:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        while True:
            for key, _ in sel.select():
                data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)


def serve(listen: str, upstream: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen)
    server.listen(64)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        engine.connect(upstream)
        threading.Thread(target=pipe, args=(client, engine), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/var/run/docker.sock")
