"""Running the app under uvicorn with a shutdown that answers every request in flight.

Why not plain ``uvicorn.run``: on SIGINT / SIGTERM uvicorn waits for open connections, cuts
them without an answer once its graceful timeout passes, and only then tells the app (lifespan
shutdown) that it is stopping, too late to end a stream properly. The server here drains the
app first (:meth:`~tah.engine.server.ServerState.drain`): new requests get 503, requests in
flight get ``shutdown_timeout`` seconds, then end with finish reason ``abort`` (streams still
send ``[DONE]``); uvicorn's own timeout stays as a backstop a few seconds later.

The port is bound before anything announces the server (:func:`bind`), so a busy port is one
clear error and never follows a "serving on ..." line.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from tah.engine.server import SHUTDOWN_GRACE_S, ServerState
from tah.errors import ConfigError


def serve(
    app: FastAPI,
    host: str,
    port: int,
    log_level: str = "info",
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Bind ``host:port``, call ``on_bound(port)`` (the announcement), then run ``app``
    (from :func:`~tah.engine.server.create_app`) until SIGINT / SIGTERM."""
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    if on_bound is not None:
        on_bound(bound_port)
    server = make_server(app, host=host, port=bound_port, log_level=log_level)
    server.run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ConfigError naming the port if it is taken
    or the address cannot be used."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address this machine knows: {exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use: stop what is using it or pass "
                "another --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: FastAPI, **config: Any):
    """A ``uvicorn.Server`` for ``app`` whose shutdown drains the app first; ``config`` goes
    to ``uvicorn.Config``."""
    import uvicorn

    state: ServerState = app.state.tah
    config.setdefault("timeout_graceful_shutdown", state.shutdown_timeout + SHUTDOWN_GRACE_S)

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            drain = asyncio.ensure_future(state.drain())
            try:
                await super().shutdown(sockets)
            finally:
                drain.cancel()

    return DrainingServer(uvicorn.Config(app, **config))
