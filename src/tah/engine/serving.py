"""Running the app under uvicorn with a shutdown that answers every request in flight.

Why not plain ``uvicorn.run``: on SIGINT / SIGTERM uvicorn waits for open connections, cuts
them without an answer once its graceful timeout passes, and only then tells the app (lifespan
shutdown) that it is stopping, too late to end a stream properly. The server here drains the
app first (:meth:`~tah.engine.server.ServerState.drain`): new requests get 503, requests in
flight get ``shutdown_timeout`` seconds, then end with finish reason ``abort`` (streams still
send ``[DONE]``); uvicorn's own timeout stays as a backstop a few seconds later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from tah.engine.server import SHUTDOWN_GRACE_S, ServerState


def serve(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Run ``app`` (from :func:`~tah.engine.server.create_app`) until SIGINT / SIGTERM."""
    server = make_server(app, host=host, port=port, log_level=log_level)
    server.run()


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
