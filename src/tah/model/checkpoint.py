"""Saving and loading TaH checkpoints.

Directory layout (the published one, docs/method.md §12, plus safetensors deciders)::

    config.json, model.safetensors, generation_config.json   the base model, plain HF layout
    tokenizer files                                           when the model has a tokenizer
    lora/                                                     PEFT adapter directory
    decider.safetensors                                       MLP decider weights (ours)
    iter_decider.bin                                          published decider (read only)
    tah_config.json                                           TaHConfig (ours or published keys)

Writes go to a temporary directory renamed into place. The published ``iter_decider.bin`` is a
pickle; it is read with ``torch.load(weights_only=True)`` only, so no pickled code ever runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tah.config import TaHConfig
from tah.errors import CheckpointError
from tah.io import atomic_dir

logger = logging.getLogger(__name__)

CONFIG_NAME = "tah_config.json"
DECIDER_NAME = "decider.safetensors"
PUBLISHED_DECIDER_NAME = "iter_decider.bin"
LORA_DIR = "lora"


@contextlib.contextmanager
def quiet_hub_bars() -> Iterator[None]:
    """No transformers "Loading weights" / "Writing model shards" bars: they are noise in a CLI
    that loads one model and shows its own progress."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def damaged_file(path: str | os.PathLike, exc: BaseException) -> CheckpointError:
    """The error for a weights file that exists but cannot be read."""
    return CheckpointError(
        f"{path} is damaged (not a readable weights file: {exc}); it was probably cut short by "
        "an interrupted copy, download or save: copy it again or re-save the checkpoint"
    )


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or garbage file is a CheckpointError
    that names it (safetensors' own error names neither the file nor the remedy)."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise CheckpointError(f"{path} does not exist") from None
        raise damaged_file(path, exc) from None


def check_safetensors(directory: str | os.PathLike) -> None:
    """Open the header of every ``*.safetensors`` in ``directory`` and its ``lora/`` folder.

    Cheap (headers and a size check only, no tensor is read); run before handing the folder to
    transformers or PEFT, whose loaders let a damaged file escape as a raw ``SafetensorError``.
    """
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    for path in sorted([*directory.glob("*.safetensors"), *directory.glob("*/*.safetensors")]):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError) as exc:
            raise damaged_file(path, exc) from None


def check_finite(weights: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Reject weights holding NaN or infinity (a diverged or corrupted save)."""
    bad = sorted(
        name
        for name, tensor in weights.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    )
    if bad:
        raise CheckpointError(
            f"{path} holds NaN or infinite values in {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}; the checkpoint is unusable (a diverged run or a "
            "damaged file): use an earlier checkpoint"
        )


def clean_base_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The base model's weights under their plain HF names (no LoRA, no peft prefixes)."""
    state = {}
    for name, tensor in model.base_model.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return state


def save_pretrained(model: Any, path: str | os.PathLike) -> None:
    base = model.base_model
    with atomic_dir(path) as tmp:
        implementation = base.config._attn_implementation
        # The saved config must load without tah installed: record the standard attention.
        base.config._attn_implementation = "sdpa"
        try:
            base.save_pretrained(tmp, state_dict=clean_base_state_dict(model))
        finally:
            base.config._attn_implementation = implementation
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
        if model.lora is not None:
            model.backbone.save_pretrained(tmp / LORA_DIR)
        decider_state = model.decider.state_dict()
        if decider_state:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in decider_state.items()},
                str(tmp / DECIDER_NAME),
            )
        model.config.save(tmp / CONFIG_NAME)


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached right now, or None when it may be.

    Offline, the hub clients retry for tens of seconds before failing; one short connection
    attempt lets a command fail at once with the local paths it searched. Behind a proxy we
    cannot tell, so we say nothing and let the client try.
    """
    import socket
    from urllib.parse import urlparse

    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout_s).close()
    except OSError as exc:
        return f"{host} is not reachable ({exc.strerror or exc})"
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A local directory, or a hub id resolved through the local Hugging Face cache / hub."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise CheckpointError(f"{local} is a file, not a checkpoint directory")
    text = str(path)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint directory at {text}")
    from huggingface_hub import snapshot_download

    try:  # the local Hugging Face cache first: no network needed when it is there
        return Path(snapshot_download(text, local_files_only=True))
    except Exception:
        pass
    offline = hub_unreachable()
    if offline is not None:
        raise CheckpointError(
            f"{text} is neither a local directory ({local.resolve()}) nor in the Hugging Face "
            f"cache, and the hub is offline ({offline}); pass a local checkpoint path"
        )
    try:
        return Path(snapshot_download(text))
    except Exception as exc:  # offline, unknown repo, auth: all mean "not available here"
        raise CheckpointError(
            f"{text} is neither a local directory nor a downloadable hub model ({type(exc).__name__}: "
            f"{exc}); pass a local checkpoint path"
        ) from None


def _load_published_decider(path: Path) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects that cannot be loaded safely (weights_only=True refused: "
            f"{exc}); refusing to execute pickled code"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise damaged_file(path, exc) from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(
            f"{path} is not a TaH decider file (expected a dict with 'state_dict')"
        )
    if payload.get("class") not in (None, "MLPIterDecider"):
        raise CheckpointError(
            f"{path} holds decider class {payload.get('class')!r}, not an MLP decider"
        )
    return payload["state_dict"]


def load_pretrained(
    cls: type,
    path: str | os.PathLike,
    threshold: float | None = None,
    decider: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    **overrides: Any,
) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tah.model.adapters import add_lora, load_lora, lora_settings

    root = resolve_checkpoint(path)
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{root} has no {CONFIG_NAME}: it is not a TaH checkpoint (wrap a plain model with "
            "TaHForCausalLM.from_base instead)"
        )
    saved = TaHConfig.load(config_path)
    config = TaHConfig.load(config_path, threshold=threshold, decider=decider, **overrides)
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root} has no config.json for the base model")
    if not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
        raise CheckpointError(f"{root} has no base model weights (model.safetensors)")
    check_safetensors(root)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        with quiet_hub_bars():
            base = AutoModelForCausalLM.from_pretrained(root, dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load the base model from {root}: {exc}") from None
    tokenizer = None
    if has_tokenizer(root):
        tokenizer = AutoTokenizer.from_pretrained(root)

    backbone = base
    if config.adapter == "lora" and config.max_iter > 1:
        if (root / LORA_DIR).is_dir():
            backbone = load_lora(base, root / LORA_DIR)
            config = config.replace(**lora_settings(backbone))
        elif saved.adapter == "lora" and saved.max_iter > 1:
            raise CheckpointError(
                f"{root} has no {LORA_DIR}/ adapter directory but its config needs one"
            )
        else:
            backbone = add_lora(base, config)
    model = cls(backbone, config, tokenizer)
    model._attach_lora()

    state = model.decider.state_dict()
    if state:
        if (root / DECIDER_NAME).is_file():
            weights = read_safetensors(root / DECIDER_NAME)
            check_finite(weights, root / DECIDER_NAME)
        elif (root / PUBLISHED_DECIDER_NAME).is_file():
            weights = _load_published_decider(root / PUBLISHED_DECIDER_NAME)
            check_finite(weights, root / PUBLISHED_DECIDER_NAME)
        elif saved.decider == config.decider:
            raise CheckpointError(f"{root} has no decider weights ({DECIDER_NAME})")
        else:
            weights = None  # a new decider for this checkpoint (e.g. stage 2 after stage 1)
            logger.info("decider %r starts from fresh weights", config.decider)
        if weights is not None:
            weights.setdefault("threshold", state["threshold"])
            try:
                model.decider.load_state_dict(weights, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"decider weights in {root} do not fit the config: {exc}"
                ) from None
        model.set_threshold(config.threshold)
    if dtype is not None:
        model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    return model


def has_tokenizer(root: Path) -> bool:
    return (root / "tokenizer_config.json").is_file() or (root / "tokenizer.json").is_file()
