"""The four training setups: which model, which parts train, which loss, how it is saved.

* ``stage1`` (docs/method.md §10): TaH with the LabelDecider (routing from the labels); CE at each
  token's output logits, which under label routing are the oracle-depth logits; backbone and
  LoRA trainable (each by flag).
* ``stage2`` (C.2): the stage-1 checkpoint with a fresh MLP decider; only the decider trains and
  that is *verified* (the trainable set must equal the decider's parameters); only depth 1 runs
  (``max_depth=1``: nothing depends on deeper passes, docs/method.md §10); pos-weighted BCE on
  "continue after depth 1".
* ``standard``: the plain Hugging Face model (max_iter 1, no adapter) on the same data and
  optimiser; saved as a plain HF checkpoint.
* ``alwaysthink``: TaH where every supervised token runs all ``max_iter`` depths (features built
  with the labelling module's ``all`` strategy); saved with the ``always`` decider for inference.

Why this is not a Trainer subclass: each stage is a model builder plus one micro-batch function
returning *sums* (see :mod:`tah.training.losses`); the loop in :mod:`tah.training.trainer` is
shared and knows nothing about TaH.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tah.errors import CheckpointError, ConfigError, TaHError
from tah.model.checkpoint import check_safetensors, quiet_hub_bars
from tah.training.losses import (
    IGNORE,
    decider_bce_sum,
    decider_targets_mask,
    next_token_ce_sum,
)
from tah.training.metrics import StepStats
from tah.training.recipe import Recipe

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class ModelInfo:
    """What the data checks need to know about the model before its weights load."""

    name: str
    vocab_size: int
    max_iter: int
    tokenizer: Any


# ------------------------------------------------------------------ before loading weights
def describe_model(recipe: Recipe, resume_dir: str | Path | None = None) -> ModelInfo:
    """Tokenizer and vocabulary size (from config files only), checked against each other."""
    m = recipe.model
    source = str(resume_dir or m.init_from or m.base or "init_config")
    vocab = _config_vocab(recipe, resume_dir)
    tokenizer = load_tokenizer(recipe, resume_dir)
    if tokenizer is not None and len(tokenizer) > vocab:
        raise ConfigError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has {len(tokenizer)} ids but "
            f"model {source!r} has a vocabulary of {vocab}; use the model's own tokenizer "
            "(model.tokenizer) or a model whose embeddings cover it"
        )
    if tokenizer is not None:
        _set_special_tokens(recipe, tokenizer, None)
    return ModelInfo(source, vocab, _max_iter(recipe, resume_dir), tokenizer)


def load_tokenizer(recipe: Recipe, resume_dir: str | Path | None = None) -> Any:
    """The recipe's tokenizer, else the one saved with the weights, else None (ids only)."""
    from transformers import AutoTokenizer

    m = recipe.model
    candidates = [m.tokenizer] if m.tokenizer else [resume_dir, m.init_from, m.base]
    for cand in candidates:
        if not cand:
            continue
        path = Path(cand)
        if (
            m.tokenizer
            and not path.exists()
            and (cand.startswith((".", "/", "~")) or cand.count("/") != 1)
        ):
            raise ConfigError(f"model.tokenizer {cand} does not exist")
        if m.tokenizer or any((path / f).is_file() for f in _TOKENIZER_FILES):
            try:
                return AutoTokenizer.from_pretrained(str(cand))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load tokenizer from {cand}: {exc}") from None
    log.warning("no tokenizer found: training on token ids only (labels cannot be checked)")
    return None


def _config_vocab(recipe: Recipe, resume_dir) -> int:
    m = recipe.model
    if m.init_config is not None and resume_dir is None:
        if "vocab_size" not in m.init_config:
            raise ConfigError("model.init_config needs vocab_size")
        return int(m.init_config["vocab_size"])
    root = Path(resume_dir or m.init_from or m.base)
    file = root / "config.json"
    if not file.is_file():
        if resume_dir is None and m.base and not root.exists():
            if m.base.startswith((".", "/", "~")) or m.base.count("/") != 1:
                raise ConfigError(
                    f"model.base {m.base} does not exist (no such directory); check the path, "
                    "or give a hub id as owner/name"
                )
            from transformers import AutoConfig

            try:  # a hub id: only works with the model in the local HF cache (or online)
                return int(AutoConfig.from_pretrained(m.base).vocab_size)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot read the config of model.base {m.base!r}: {exc}"
                ) from None
        key = "--resume" if resume_dir else "model.init_from" if m.init_from else "model.base"
        hint = "; run stage 1 first" if recipe.stage == "stage2" and not resume_dir else ""
        raise CheckpointError(f"{key} {root} has no config.json: not a model directory{hint}")
    config = json.loads(file.read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    return int(config["vocab_size"])


def _max_iter(recipe: Recipe, resume_dir) -> int:
    if recipe.stage == "standard":
        return 1
    if "max_iter" in recipe.model.tah:
        return int(recipe.model.tah["max_iter"])
    tah_file = Path(resume_dir or recipe.model.init_from or "") / "tah_config.json"
    if tah_file.is_file():
        return int(json.loads(tah_file.read_text(encoding="utf-8")).get("max_iter", 2))
    from tah.config import TaHConfig

    return TaHConfig().max_iter


# ------------------------------------------------------------------ building
def trainable_flags(recipe: Recipe) -> tuple[bool, bool, bool]:
    """(backbone, lora, decider) for the recipe's stage, after the recipe's overrides."""
    m = recipe.model
    if recipe.stage == "stage2":
        return False, False, True
    pick = lambda v, d: d if v is None else bool(v)  # noqa: E731
    if recipe.stage == "standard":
        return pick(m.train_backbone, True), False, False
    return pick(m.train_backbone, True), pick(m.train_lora, True), pick(m.train_decider, False)


def build_model(recipe: Recipe, info: ModelInfo, resume_dir: str | Path | None = None) -> nn.Module:
    """Load / build the model for the stage (from ``resume_dir`` when resuming)."""
    with quiet_hub_bars():
        return _build_model(recipe, info, resume_dir)


def _build_model(recipe: Recipe, info: ModelInfo, resume_dir: str | Path | None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    m = recipe.model
    dtype = _DTYPES[m.dtype]
    if recipe.stage == "standard":
        if resume_dir is not None:
            check_safetensors(resume_dir)
            model = AutoModelForCausalLM.from_pretrained(str(resume_dir), dtype=dtype)
        else:
            model = _load_hf(recipe, dtype)
    else:
        from tah import TaHConfig, TaHForCausalLM

        decider = "mlp" if recipe.stage == "stage2" else "label"
        overrides = {k: v for k, v in m.tah.items() if k != "decider"}
        start = resume_dir or m.init_from
        if start is not None:
            model = TaHForCausalLM.from_pretrained(
                str(start), decider=decider, dtype=dtype, **overrides
            )
            if info.tokenizer is not None:
                model.tokenizer = info.tokenizer
        else:
            config = TaHConfig(**{**overrides, "decider": decider})
            model = TaHForCausalLM.from_base(_load_hf(recipe, dtype), config, info.tokenizer)
        model.to(dtype=dtype)
    _own_storage(model)
    hf = model if recipe.stage == "standard" else model.base_model
    _set_special_tokens(recipe, info.tokenizer, hf)
    rows = hf.get_input_embeddings().weight.shape[0]
    if info.tokenizer is not None and len(info.tokenizer) > rows:
        raise ConfigError(
            f"tokenizer has {len(info.tokenizer)} ids but the model has {rows} embedding rows"
        )
    return model


def _own_storage(model: nn.Module) -> None:
    """Give every loaded tensor fresh, contiguous memory.

    Weights read from safetensors may live in a memory map at arbitrary file offsets. Training
    writes to them anyway, and CPU BLAS kernels may round differently for differently aligned
    inputs, which would make a resumed run drift from the uninterrupted one in the last bits.
    """
    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                param.data = param.data.clone(memory_format=torch.contiguous_format)
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    setattr(module, name, buf.clone(memory_format=torch.contiguous_format))


def _load_hf(recipe: Recipe, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    m = recipe.model
    if m.init_config is not None:
        cfg = dict(m.init_config)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        torch.manual_seed(recipe.train.seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    if Path(m.base).is_dir():
        check_safetensors(m.base)
    try:
        return AutoModelForCausalLM.from_pretrained(m.base, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load model.base {m.base!r}: {exc}") from None


def _set_special_tokens(recipe: Recipe, tokenizer: Any, hf_model: nn.Module | None) -> None:
    """Write the recipe's eos/pad tokens into tokenizer, model config and generation config."""
    for role in ("eos", "pad"):
        token = getattr(recipe.model, f"{role}_token")
        if token is None:
            continue
        if tokenizer is None:
            raise ConfigError(f"model.{role}_token needs a tokenizer (model.tokenizer)")
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
            raise ConfigError(f"model.{role}_token {token!r} is not a token of the tokenizer")
        setattr(tokenizer, f"{role}_token", token)
        if hf_model is not None:
            setattr(hf_model.config, f"{role}_token_id", token_id)
            gen = getattr(hf_model, "generation_config", None)
            if gen is not None:
                setattr(gen, f"{role}_token_id", token_id)


def pad_token_id(tokenizer: Any, model: nn.Module) -> int:
    """Id written into padding positions (never attended to, never a target)."""
    for value in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
    ):
        if isinstance(value, int):
            return value
    return 0


def set_trainable(recipe: Recipe, model: nn.Module) -> list[str]:
    """Apply the stage's trainable flags; verify stage 2 trains the decider alone.

    Returns the names of the trainable parameters.
    """
    backbone, lora, decider = trainable_flags(recipe)
    if recipe.stage == "standard":
        for p in model.parameters():
            p.requires_grad_(backbone)
    else:
        if lora and model.lora is None:
            log.info("no LoRA adapter (adapter 'none' or max_iter 1): train_lora has no effect")
        model.set_trainable(backbone=backbone, lora=lora, decider=decider)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ConfigError(
            f"stage {recipe.stage}: nothing to train (model.train_backbone / train_lora / "
            "train_decider are all off, or the decider has no parameters)"
        )
    if recipe.stage == "stage2":
        decider_names = {f"decider.{n}" for n, _ in model.decider.named_parameters()}
        if set(names) != decider_names:
            extra = sorted(set(names) - decider_names)[:5]
            raise TaHError(
                f"stage 2 must train the decider only, but {extra} are trainable; this is a bug "
                "in the model's set_trainable"
            )
    return names


def resolve_gguf_sources(recipe: Recipe) -> None:
    """``model.base`` / ``model.tokenizer`` may name a .gguf file: train from its dequantised
    copy (converted once into the cache; parallel processes wait on the conversion lock)."""
    from tah.model.loading import resolve_model_source

    for key in ("base", "tokenizer"):
        value = getattr(recipe.model, key)
        if isinstance(value, str) and value.endswith(".gguf"):
            setattr(recipe.model, key, resolve_model_source(value))


def check_gradient_checkpointing(recipe: Recipe) -> None:
    """Refuse gradient checkpointing where it is unsafe (called before anything loads).

    TaH's duo-causal attention appends each layer's keys/values to a per-depth store during the
    forward (later depths attend to them). Recomputing a layer in the backward pass would append
    them a second time and attend to the wrong set, so checkpointing decoder layers is unsafe
    for any TaH forward with more than one depth. The Standard baseline is a plain HF model.
    """
    if recipe.train.gradient_checkpointing and recipe.stage != "standard":
        raise ConfigError(
            f"train.gradient_checkpointing is not supported for stage {recipe.stage}: the TaH "
            "forward writes every layer's keys/values into a per-depth store that deeper passes "
            "read, and recomputing layers in the backward pass would write them twice. Set "
            "train.gradient_checkpointing: false (reduce max_length or per_device_batch_size, or "
            "use FSDP / ZeRO to save memory)"
        )


def enable_gradient_checkpointing(recipe: Recipe, model: nn.Module) -> None:
    """HF gradient checkpointing of the decoder layers (Standard baseline only)."""
    check_gradient_checkpointing(recipe)
    if recipe.train.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False


# ------------------------------------------------------------------ one micro-batch
@dataclass
class LossSettings:
    pos_weight: float = 1.0
    threshold: float = 0.5
    decider_targets: str = "all"
    ensure_deep_pass: bool = True


def micro_step(
    recipe: Recipe,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    settings: LossSettings,
    training: bool = True,
) -> tuple[torch.Tensor, StepStats]:
    """Forward one micro-batch; return the loss *sum* and its stats (``items`` = its count)."""
    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    stats = StepStats(tokens=float(attn.sum()))
    if recipe.stage == "standard":
        out = model(input_ids=ids, attention_mask=attn, use_cache=False)
        loss, n = next_token_ce_sum(out.logits, labels)
        stats.items = n
        return loss, stats
    iter_labels = batch["iter_labels"]
    if recipe.stage == "stage2":
        out = model(ids, attention_mask=attn, max_depth=1)
        rows = decider_targets_mask(iter_labels, attn, labels, settings.decider_targets)
        loss, n, counts = decider_bce_sum(
            out.decider_logits[..., 0], iter_labels, rows, settings.pos_weight, settings.threshold
        )
        stats.items = n
        stats.add_counts(counts)
        return loss, stats
    out = model(
        ids,
        attention_mask=attn,
        iter_labels=iter_labels,
        ensure_deep_pass=settings.ensure_deep_pass and training,
    )
    loss, n = next_token_ce_sum(out.logits, labels)
    stats.items = n
    with torch.no_grad():
        supervised = labels != IGNORE
        stats.depth_sum = float(out.iter_counts[supervised].sum())
        stats.depth_count = float(supervised.sum())
        stats.hard = float((iter_labels[supervised] > 1).sum())
    return loss, stats


def count_items(recipe: Recipe, batch: dict[str, torch.Tensor], settings: LossSettings) -> int:
    """The loss item count of a batch, known before the forward (for global normalisation)."""
    if recipe.stage == "stage2":
        rows = decider_targets_mask(
            batch["iter_labels"], batch["attention_mask"], batch["labels"], settings.decider_targets
        )
        return int(rows.sum())
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def prepare_for_training(recipe: Recipe, model: nn.Module) -> None:
    """train() mode; stage 2 keeps the frozen backbone in eval mode (features fixed)."""
    model.train()
    if recipe.stage == "stage2":
        model.backbone.eval()


# ------------------------------------------------------------------ saving
def save_model(recipe: Recipe, model: nn.Module, tokenizer: Any, path: Path) -> None:
    """Write the model in the layout users load: TaH ``save_pretrained`` or plain HF."""
    with quiet_hub_bars():
        _save_model(recipe, model, tokenizer, path)


def _save_model(recipe: Recipe, model: nn.Module, tokenizer: Any, path: Path) -> None:
    if recipe.stage == "standard":
        model.save_pretrained(str(path))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return
    context = contextlib.nullcontext()
    if recipe.stage == "alwaysthink":
        context = _config_decider(model, "always")
    with context:
        model.save_pretrained(path)


@contextlib.contextmanager
def _config_decider(model: nn.Module, decider: str):
    """Save an AlwaysThink model with the ``always`` decider (inference iterates every token)."""
    old = model.config.decider
    model.config.decider = decider
    try:
        yield
    finally:
        model.config.decider = old
