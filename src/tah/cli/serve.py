"""``tah serve``: an OpenAI-compatible HTTP server over the batched TaH engine.

    tah serve --model PATH [--host 127.0.0.1] [--port 8000] [--max-batch 16]

PATH is a TaH checkpoint or a plain Hugging Face directory (served as a Standard model). The
routes are ``/v1/completions``, ``/v1/chat/completions`` (both with ``stream``), ``/v1/models``
and ``/health``, plus the browser playground at ``/``; see :mod:`tah.engine.server` for the
TaH request fields.
"""

from __future__ import annotations

import argparse
import logging

from tah.engine import COMPILE_MODES
from tah.errors import ConfigError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="TaH checkpoint or HF model directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="model id clients send")
    parser.add_argument("--threshold", type=float, default=None, help="default decider threshold")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    parser.add_argument(
        "--max-concurrency", type=int, default=64, help="requests in flight (queued + running)"
    )
    parser.add_argument(
        "--max-request-bytes", type=int, default=1 << 20, help="largest accepted request body"
    )
    parser.add_argument("--max-model-len", type=int, default=None, help="context per request")
    parser.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens per step")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16")
    parser.add_argument(
        "--shutdown-timeout", type=float, default=30.0, help="seconds to finish requests on exit"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for requests without one")
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile the layer stack (for GPUs; it did not help on CPU)",
    )


def build_app(args: argparse.Namespace):
    """Load the model and build the FastAPI app (separate from :func:`run` for tests)."""
    import torch

    from tah.engine.engine import Engine
    from tah.engine.server import create_app
    from tah.model.loading import load_model_from_cli

    for name in ("max_batch", "max_concurrency", "max_request_bytes"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    model = load_model_from_cli(args.model, threshold=args.threshold)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    name = args.served_model_name or (
        str(args.model).rstrip("/").split("/")[-1] if args.model else "tiny-tah"
    )
    engine = Engine.from_tah_model(
        model,
        max_batch=args.max_batch,
        max_len=args.max_model_len,
        prefill_chunk=args.prefill_chunk,
        device=args.device,
        dtype=dtype,
        seed=args.seed,
        model_name=name,
        compile_mode=getattr(args, "compile", None),
    )
    return create_app(
        engine,
        model_name=name,
        max_concurrency=args.max_concurrency,
        max_request_bytes=args.max_request_bytes,
        shutdown_timeout=args.shutdown_timeout,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    app = build_app(args)
    state = app.state.tah
    logger.info(
        "serving %s on http://%s:%d (max batch %d, context %d, depth %d, decider %s)",
        state.model_name,
        args.host,
        args.port,
        args.max_batch,
        state.engine.max_len,
        state.engine.max_iter,
        state.engine.kind,
    )
    logger.info("playground: open http://%s:%d/ in a browser", args.host, args.port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    return 0
