"""Listening on a host and port, and running the application with uvicorn.

The socket is bound here, before uvicorn starts, so that a port already in use or a host that
is not this machine's is a `TorsoError` naming `--host`/`--port`, and `--port 0` gets a free
port whose number is known (and printed) before the first request.
"""

from __future__ import annotations

import socket

from starlette.applications import Starlette

from torso.errors import TorsoError


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` and listening (`port` 0: a free port, see
    `sock.getsockname()`). A host or port that cannot be had is a `TorsoError`."""
    if not 0 <= port <= 65535:
        raise TorsoError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise TorsoError(f"--host '{host}': not an address of this machine ({error})") from None
    family, kind, protocol, _, address = infos[0]
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise TorsoError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket) -> str:
    """`http://host:port` of a listening socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    sock: socket.socket | None = None,
    log_level: str = "info",
) -> None:
    """Serve `app` with uvicorn on `sock` (default: `listen(host, port)`) until interrupted
    (Ctrl-C or SIGTERM: requests in flight are finished first)."""
    import uvicorn

    sock = sock if sock is not None else listen(host, port)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
