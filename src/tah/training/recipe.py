"""Training recipes: YAML files read into validated dataclasses, with ``--set`` overrides.

Why our own loader rather than Hydra/OmegaConf or HF ``TrainingArguments``: a recipe here is a
small, closed schema (six sections), and the one behaviour we need above plain YAML is a *clear
error before any compute* for a key that does not exist (with the closest valid key suggested),
plus dotted command-line overrides that go through the same checks. That is ~200 lines with
``dataclasses`` and ``typing``; a framework would add a dependency and its own error style.

A recipe names a ``stage``:

* ``stage1`` - TaH, oracle routing from the labels (LabelDecider), CE at each token's oracle depth,
  backbone + LoRA trainable (docs/method.md §10);
* ``stage2`` - TaH, fresh MLP decider trained alone on pos-weighted BCE, depth 1 only (C.2);
* ``standard`` - the plain Hugging Face model (max_iter 1, no adapter), same data and optimiser;
* ``alwaysthink`` - TaH where every supervised token runs all ``max_iter`` depths.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tah.errors import ConfigError
from tah.training.recipe_parse import apply_override, build_dataclass, deep_copy, text_line_of

STAGES = ("stage1", "stage2", "standard", "alwaysthink")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
SCHEDULERS = ("cosine_with_min_lr", "linear", "constant")
DTYPES = ("float32", "bfloat16", "float16")
REPORTERS = ("tensorboard", "wandb")


@dataclass
class ModelSection:
    """Which weights to start from and which parts train."""

    # A Hugging Face model directory (or hub id) to wrap: stage1 / standard / alwaysthink.
    base: str | None = None
    # Alternative to ``base``: a random-weight model built from this HF config dict
    # (``model_type`` required). For CPU-scale recipes and smoke runs.
    init_config: dict[str, Any] | None = None
    # A TaH checkpoint to start from (stage 2: the stage-1 output).
    init_from: str | None = None
    # Tokenizer directory; default: the one saved with ``base`` / ``init_from``.
    tokenizer: str | None = None
    # dtype of the weights as loaded (the optimiser's master weights). Mixed precision is
    # ``train.mixed_precision``.
    dtype: str = "float32"
    # Special tokens written into tokenizer, model config and generation config (C, HEAD).
    eos_token: str | None = None
    pad_token: str | None = None
    # TaHConfig fields (max_iter, lora_r, decider, threshold, decider_layers, ...).
    tah: dict[str, Any] = field(default_factory=dict)
    # Trainable parts; None = the stage's default. Stage 2 allows only the decider.
    train_backbone: bool | None = None
    train_lora: bool | None = None
    train_decider: bool | None = None


@dataclass
class DataSection:
    """Labelled training data (output of ``tah label``) and how to turn it into examples."""

    train: str = ""
    eval: str | None = None
    max_length: int = 8192
    # "cutoff" truncates long rows, "filter" drops them (docs/method.md §8).
    max_length_action: str = "cutoff"
    # How hard-token labels become iteration labels; None = the stage's default
    # ("mismatch" for TaH stages, "all" for alwaysthink).
    iter_strategy: str | None = None
    # Malformed JSONL lines: "error" stops at the first one, "skip" skips and counts them.
    on_bad_line: str = "error"
    # Keep only rows with at least one supervised hard token (the reference's pre-filter).
    require_hard: bool = True
    # Use only the first N rows after filtering (quick runs); None = all.
    max_examples: int | None = None
    # Passes of prompt (unsupervised) tokens in training (docs/method.md §8 query_iter_count): 1 as
    # the reference; an AlwaysThink trained with max_iter here iterates every token, as its
    # ``always`` decider does at inference.
    query_iter: int = 1


@dataclass
class OptimSection:
    """AdamW and the learning-rate schedule (HF defaults; docs/method.md §10)."""

    lr: float = 4e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float | None = 0.2
    scheduler: str = "cosine_with_min_lr"
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1


@dataclass
class LossSection:
    """Stage-2 decider loss settings (the other stages use next-token cross-entropy)."""

    # BCE positive weight: a number, or "auto" = negatives / positives over the training data.
    pos_weight: float | str = "auto"
    # Which tokens the decider is trained on: "all" valid tokens with an iteration label
    # (prompt tokens included as negatives, like the reference) or "response" tokens only.
    decider_targets: str = "all"


@dataclass
class TrainSection:
    """Loop length, batch geometry, precision and seeds."""

    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    per_device_batch_size: int = 1
    # Give either the global batch (sequences per optimiser step, all processes) or the number
    # of accumulation steps. With global_batch_size the accumulation is derived from the number
    # of processes, so the same recipe keeps its hyper-parameters on 1 or 8 GPUs.
    global_batch_size: int | None = None
    grad_accum: int | None = None
    # auto = bf16 on a CUDA GPU that has it, else fp32. bool because YAML 1.1 reads an unquoted
    # `no` as false; validate() turns that into "no"
    mixed_precision: str | bool = "auto"
    gradient_checkpointing: bool = False
    seed: int = 420
    # Stage 1 / alwaysthink: if no token would iterate, force one (keeps LoRA in every graph).
    ensure_deep_pass: bool = True
    find_unused_parameters: bool = False


@dataclass
class OutputSection:
    """Where results go, how often to log, evaluate and checkpoint."""

    dir: str = ""
    log_every: int = 1
    # Checkpoint every N optimiser steps (None = never mid-run) and/or at each epoch end.
    save_every: int | None = None
    save_each_epoch: bool = False
    keep_last: int | None = None  # keep only the newest N mid-run checkpoints
    eval_every: int | None = None
    eval_each_epoch: bool = False
    report_to: list[str] = field(default_factory=list)  # "tensorboard", "wandb"
    run_name: str | None = None
    progress: bool = True


@dataclass
class Recipe:
    """A whole training run."""

    stage: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)
    source: str | None = field(default=None, metadata={"internal": True})

    # -------------------------------------------------------------- derived values
    @property
    def uses_tah(self) -> bool:
        return self.stage != "standard"

    @property
    def iter_strategy(self) -> str:
        if self.data.iter_strategy is not None:
            return self.data.iter_strategy
        return "all" if self.stage == "alwaysthink" else "mismatch"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source", None)
        return data

    def validate(self) -> None:
        """Cross-field checks; every message names the key and the fix."""
        where = f" (recipe {self.source})" if self.source else ""
        self._validate_model(where)
        self._validate_data_and_optim(where)
        self._validate_train_and_output(where)

    def _validate_model(self, where: str) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}{where}")
        m = self.model
        sources = [k for k in ("base", "init_config", "init_from") if getattr(m, k)]
        if self.stage == "stage2":
            if not m.init_from:
                raise ConfigError(
                    f"stage2 needs model.init_from = the stage-1 checkpoint directory{where}"
                )
            if m.base or m.init_config:
                raise ConfigError(
                    f"stage2 starts from model.init_from only; remove {sources}{where}"
                )
            bad = [
                k for k in ("train_backbone", "train_lora") if getattr(m, k) not in (None, False)
            ]
            if bad or m.train_decider is False:
                raise ConfigError(
                    f"stage2 trains the decider only; model.{bad or ['train_decider']} cannot be "
                    f"changed{where}"
                )
        elif len(sources) != 1:
            raise ConfigError(
                f"stage {self.stage} needs exactly one of model.base, model.init_config, "
                f"model.init_from; got {sources or 'none'}{where}"
            )
        if self.stage == "standard":
            if m.init_from:
                raise ConfigError(f"stage standard trains a plain HF model: use model.base{where}")
            if m.tah:
                raise ConfigError(
                    f"stage standard has no TaH settings (max_iter 1, no adapter); remove "
                    f"model.tah {sorted(m.tah)}{where}"
                )
            if m.train_lora or m.train_decider:
                raise ConfigError(f"stage standard has no LoRA or decider to train{where}")
        if m.init_config is not None and "model_type" not in m.init_config:
            raise ConfigError(f"model.init_config needs a model_type (e.g. qwen3){where}")
        if m.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {DTYPES}, got {m.dtype!r}{where}")
        _check_tah_keys(m.tah, where)
        if self.stage in ("stage1", "alwaysthink") and m.tah.get("decider", "label") != "label":
            raise ConfigError(
                f"{self.stage} routes by the labels: model.tah.decider must be 'label' (or "
                f"absent), got {m.tah['decider']!r}{where}"
            )
        if self.stage == "stage2" and m.tah.get("decider", "mlp") != "mlp":
            raise ConfigError(
                f"stage2 trains an MLP decider: model.tah.decider must be 'mlp'{where}"
            )

    def _validate_data_and_optim(self, where: str) -> None:
        d, o = self.data, self.optim
        if not d.train:
            raise ConfigError(
                f"data.train is required (a labelled dataset from `tah label`){where}"
            )
        _positive("data.max_length", d.max_length, where)
        _choice("data.max_length_action", d.max_length_action, ("cutoff", "filter"), where)
        _choice("data.on_bad_line", d.on_bad_line, ("error", "skip"), where)
        if d.max_examples is not None:
            _positive("data.max_examples", d.max_examples, where)
        _positive("data.query_iter", d.query_iter, where)
        _positive("optim.lr", o.lr, where)
        if o.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}{where}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}{where}")
        if o.max_grad_norm is not None:
            _positive("optim.max_grad_norm", o.max_grad_norm, where)
        _choice("optim.scheduler", o.scheduler, SCHEDULERS, where)
        if not 0 <= o.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}{where}")
        if not 0 <= o.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}{where}")
        pw = self.loss.pos_weight
        if isinstance(pw, str) and pw != "auto" or not isinstance(pw, str) and pw <= 0:
            raise ConfigError(
                f"loss.pos_weight must be a positive number or 'auto', got {pw!r}{where}"
            )
        _choice("loss.decider_targets", self.loss.decider_targets, ("all", "response"), where)

    def _validate_train_and_output(self, where: str) -> None:
        d, t, out = self.data, self.train, self.output
        _positive("train.epochs", t.epochs, where)
        if t.max_steps is not None:
            _positive("train.max_steps", t.max_steps, where)
        _positive("train.per_device_batch_size", t.per_device_batch_size, where)
        if (t.global_batch_size is None) == (t.grad_accum is None):
            raise ConfigError(
                f"set exactly one of train.global_batch_size and train.grad_accum{where}"
            )
        if t.global_batch_size is not None:
            _positive("train.global_batch_size", t.global_batch_size, where)
        if t.grad_accum is not None:
            _positive("train.grad_accum", t.grad_accum, where)
        if t.mixed_precision is False:
            t.mixed_precision = "no"
        _choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION, where)
        if not out.dir:
            raise ConfigError(f"output.dir is required{where}")
        _positive("output.log_every", out.log_every, where)
        for key in ("save_every", "keep_last", "eval_every"):
            value = getattr(out, key)
            if value is not None:
                _positive(f"output.{key}", value, where)
        for name in out.report_to:
            _choice("output.report_to", name, REPORTERS, where)
        if (out.eval_every or out.eval_each_epoch) and not d.eval:
            raise ConfigError(f"output.eval_every / eval_each_epoch need data.eval{where}")

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-batches per process per optimiser step for ``world_size`` processes."""
        t = self.train
        if t.grad_accum is not None:
            return t.grad_accum
        per_step = t.per_device_batch_size * world_size
        if t.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size {t.global_batch_size} is not a multiple of "
                f"per_device_batch_size x processes = {t.per_device_batch_size} x {world_size}; "
                "change one of them"
            )
        return t.global_batch_size // per_step


# ------------------------------------------------------------------ loading and overrides
def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key.sub=value`` overrides, and validate everything."""
    import yaml

    path = Path(path)
    if not path.exists():
        path = packaged_recipe(path) or path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        shipped = sorted(
            str(p.relative_to(PACKAGED_RECIPES)) for p in PACKAGED_RECIPES.glob("*/*.yaml")
        )
        raise ConfigError(
            f"recipe {path} does not exist; recipes shipped with tah (pass as "
            f"recipes/NAME): {shipped}"
        ) from None
    except UnicodeDecodeError as exc:
        line = text_line_of(path.read_bytes(), exc.start)
        raise ConfigError(
            f"recipe {path}:{line} is not UTF-8 text ({exc.reason}); save it as UTF-8"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"recipe {path} is a directory, not a YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    return recipe_from_dict(raw, overrides, source=str(path))


# The recipes/ folder of the repository, installed inside the package (a link in the source
# tree), so `tah train recipes/tiny_cpu/stage1.yaml` also works from a pip-installed tah.
PACKAGED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def packaged_recipe(path: Path) -> Path | None:
    """The shipped recipe that ``recipes/NAME/STAGE.yaml`` (or ``NAME/STAGE.yaml``) names."""
    parts = path.parts[1:] if path.parts[:1] == ("recipes",) else path.parts
    if not parts or path.is_absolute():
        return None
    candidate = PACKAGED_RECIPES.joinpath(*parts)
    return candidate if candidate.is_file() else None


def recipe_from_dict(
    raw: dict[str, Any], overrides: list[str] | None = None, source: str | None = None
) -> Recipe:
    """Build and validate a :class:`Recipe` from nested dicts (the YAML content)."""
    raw = deep_copy(raw)
    for item in overrides or []:
        apply_override(raw, item)
    recipe = build_dataclass(Recipe, raw, "", source)
    recipe.source = source
    recipe.validate()
    return recipe


def _positive(key: str, value: float, where: str) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}{where}")


def _choice(key: str, value: Any, options: tuple[str, ...], where: str) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {options}, got {value!r}{where}")


def _check_tah_keys(tah: dict[str, Any], where: str) -> None:
    from tah.config import TaHConfig

    known = {f.name for f in dataclasses.fields(TaHConfig)}
    for key in tah:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean 'model.tah.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown recipe key 'model.tah.{key}'{where}{hint} Valid TaH keys: {sorted(known)}"
            )
    try:  # the values too (types and bounds), so --dry-run catches max_iter: 0
        TaHConfig(**{"decider": "label", **tah})
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"model.tah: {exc}{where}") from None
