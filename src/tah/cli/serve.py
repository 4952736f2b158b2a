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

from tah.engine.options import COMPILE_MODES, SPECULATE_MODES
from tah.errors import ConfigError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="TaH checkpoint or Hugging Face model directory (default: the bundled tiny model)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="model id clients send (default: the --model folder's name)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="default decider threshold; requests may override it with tah_threshold "
        "(default: the checkpoint's)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=16, help="requests decoded together (default: %(default)s)"
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=64,
        help="requests in flight, queued or running; more get 429 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=1 << 20,
        help="largest accepted request body; larger ones get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds a client has to send its request body; slower ones get 408 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="context per request, prompt plus output; at most the model's "
        "(default: the model's context, at most 2048)",
    )
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=512,
        help="prompt tokens processed per engine step (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: where the model loads, cpu)"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="weight and cache dtype (default: the model's)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds requests in flight get to finish on exit; the rest end with finish "
        "reason 'abort' (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed from which requests without one draw theirs (default: %(default)s)",
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile the layer stack (for GPUs; it did not help on CPU) (default: off)",
    )
    parser.add_argument(
        "--speculate-depth1",
        choices=SPECULATE_MODES,
        default="greedy",
        help="while a token thinks again, run depth 1 of its likely successor in the same step: "
        "for greedy requests (outputs unchanged), for all (sampled ones keep their "
        "distribution, not their per-seed draws) or off (default: %(default)s)",
    )


def _require_server_packages() -> None:
    """The HTTP server's packages are the optional ``serve`` extra."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"tah serve needs the package {exc.name!r}, which is not installed; install the "
            "server extras with `pip install 'tah[serve]'`"
        ) from None


def _load_quietly(model: str | None, threshold: float | None):
    """Load the model without transformers' "Loading weights" progress bar."""
    from transformers.utils import logging as hf_logging

    from tah.model.loading import load_model_from_cli

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load_model_from_cli(model, threshold=threshold)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _model_context(model) -> int | None:
    config = getattr(getattr(model, "base_model", None), "config", None)
    return getattr(config, "max_position_embeddings", None)


def build_app(args: argparse.Namespace):
    """Load the model and build the FastAPI app (separate from :func:`run` for tests)."""
    _require_server_packages()
    import torch

    from tah.engine.engine import Engine
    from tah.engine.server import create_app
    from tah.model.loading import resolve_device

    for name in ("max_batch", "max_concurrency", "max_request_bytes", "prefill_chunk"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("body_timeout", "shutdown_timeout"):
        if not getattr(args, name) >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise ConfigError(f"--max-model-len must be >= 2, got {args.max_model_len}")
    if args.device is not None:
        resolve_device(args.device)  # a clear error for cuda on a CPU-only torch
    model = _load_quietly(args.model, args.threshold)
    context = _model_context(model)
    if args.max_model_len is not None and context is not None and args.max_model_len > context:
        raise ConfigError(
            f"--max-model-len {args.max_model_len} exceeds the model's context of {context} "
            f"tokens; pass --max-model-len {context} or less"
        )
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
        speculate_depth1=getattr(args, "speculate_depth1", "greedy"),
    )
    return create_app(
        engine,
        model_name=name,
        max_concurrency=args.max_concurrency,
        max_request_bytes=args.max_request_bytes,
        shutdown_timeout=args.shutdown_timeout,
        body_timeout=args.body_timeout,
    )


def run(args: argparse.Namespace) -> int:
    _require_server_packages()
    from tah.engine.serving import serve

    app = build_app(args)
    state = app.state.tah

    def announce(port: int) -> None:  # only once the port is ours
        logger.info(
            "serving %s on http://%s:%d (max batch %d, context %d, depth %d, decider %s)",
            state.model_name,
            args.host,
            port,
            args.max_batch,
            state.engine.max_len,
            state.engine.max_iter,
            state.engine.kind,
        )
        logger.info("playground: open http://%s:%d/ in a browser", args.host, port)

    serve(app, host=args.host, port=args.port, on_bound=announce)
    return 0
