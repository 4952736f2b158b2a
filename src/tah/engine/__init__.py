"""The fast batched TaH decoder and its OpenAI-compatible HTTP server.

* :class:`tah.engine.engine.Engine`: continuous batching over a static per-depth KV store;
  ``Engine.from_tah_model(model)``, ``Engine.from_pretrained(path)``, ``engine.generate(...)``.
* :class:`tah.model.sampling.SamplingParams`: per-request decoding settings.
* :func:`tah.engine.server.create_app`: the FastAPI app behind ``tah serve``.

Names are imported lazily so ``import tah.engine`` does not load torch.
"""

from __future__ import annotations

from typing import Any

from tah.engine.options import COMPILE_MODES

__all__ = ["COMPILE_MODES", "Engine", "SamplingParams", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from tah.engine.engine import Engine

        return Engine
    if name == "SamplingParams":
        from tah.model.sampling import SamplingParams

        return SamplingParams
    if name == "create_app":
        from tah.engine.server import create_app

        return create_app
    raise AttributeError(f"module 'tah.engine' has no attribute {name!r}")
