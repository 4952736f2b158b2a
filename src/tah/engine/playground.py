"""The browser playground at ``/`` of ``tah serve``: one static page, shipped as package data.

Why a static file and no front-end toolchain: the page must work offline and install with the
package, so it is a single HTML file with a little plain JavaScript (no CDN, no build step)
that talks to the server's own streaming API (``/v1/completions`` and
``/v1/chat/completions`` with ``stream``), colouring each token by the depth it ran
(``tah.iter_counts`` in every chunk) and showing the decider's probability on hover
(``tah.decider_probs``, asked for with ``tah_decider_probs``).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = ("assets", "playground", "index.html")


@cache
def page_html() -> str:
    return files("tah").joinpath(*PAGE).read_text(encoding="utf-8")


def add_playground(app: FastAPI) -> None:
    """Serve the page at ``/`` (and ``/playground``)."""

    async def playground() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})

    app.add_api_route("/", playground, methods=["GET"], include_in_schema=False)
    app.add_api_route("/playground", playground, methods=["GET"], include_in_schema=False)
