"""Iteration deciders: after each depth, which tokens think again.

Every decider maps the tokens just computed (flattened to N rows) to a boolean "continue" and a
continue-logit. ``depth`` is the number of passes already done (1 after the first pass).

* :class:`LabelDecider` follows oracle labels (stage-1 training): continue iff label > depth.
* :class:`MLPDecider` is the learned decider of the paper (METHOD.md A.6, appendix K): selected
  hidden-state layers of the token plus the top-k values of its cumulative logits, through a
  residual MLP; continue iff sigmoid(logit) > threshold. Parameter names follow the published
  state dict so released checkpoints load. With ``previous_token`` (our extension, off by
  default) it also reads the same layers' depth-1 states of the previous token; the wrapper
  appends them to the features.
* :class:`AlwaysDecider` (AlwaysThink) and :class:`NeverDecider` (Standard).

Hidden-state indices follow the Hugging Face ``output_hidden_states`` tuple: 0 = embedding
output, j = output of decoder layer j (1-based), L = the final-normed output. The wrapper
captures only the layers a decider asks for, with forward hooks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tah.config import TaHConfig
from tah.errors import ConfigError

STOP_LOGIT = -10.0
GO_LOGIT = 10.0


class Decider(nn.Module):
    """Base class. ``feature_layers`` lists the hidden-state indices the decider reads."""

    name = "base"
    learned = False
    feature_layers: tuple[int, ...] = ()
    needs_topk: int = 0
    reads_previous_token: bool = False  # features also hold the previous token's depth-1 ones

    def decide(
        self,
        topk_values: Tensor | None,
        features: Tensor | None,
        depth: int,
        labels: Tensor | None,
        threshold: float | None,
        n: int,
        device: torch.device,
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class NeverDecider(Decider):
    name = "never"

    def decide(self, topk_values, features, depth, labels, threshold, n, device):
        return (
            torch.zeros(n, dtype=torch.bool, device=device),
            torch.full((n,), STOP_LOGIT, device=device),
        )


class AlwaysDecider(Decider):
    name = "always"

    def decide(self, topk_values, features, depth, labels, threshold, n, device):
        return (
            torch.ones(n, dtype=torch.bool, device=device),
            torch.full((n,), GO_LOGIT, device=device),
        )


class LabelDecider(Decider):
    """Oracle routing from iteration labels (the number of passes each token should run)."""

    name = "label"

    def decide(self, topk_values, features, depth, labels, threshold, n, device):
        if labels is None:
            raise ConfigError(
                "decider 'label' needs iter_labels (the number of passes per token); pass "
                "iter_labels=..., or load the model with decider='mlp', 'always' or 'never'"
            )
        go = (labels != -100) & (labels > depth)
        return go, torch.zeros(n, device=device)


class _ResidualBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim_in)
        self.mlp = nn.Sequential(
            nn.Linear(dim_in, dim_in * expansion),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim_in * expansion, dim_out),
            nn.Dropout(dropout),
        )
        self.dim_change = nn.Linear(dim_in, dim_out) if dim_in != dim_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.dim_change(x) + self.mlp(self.layer_norm(x))


class _Backbone(nn.Module):
    def __init__(self, dims: list[int], expansion: int, dropout: float) -> None:
        super().__init__()
        self.input_projection = nn.Linear(dims[0], dims[0])
        chain = [*dims, dims[-1]]
        self.blocks = nn.ModuleList(
            _ResidualBlock(chain[i], chain[i + 1], expansion, dropout) for i in range(len(dims))
        )
        self.output_layer = nn.Sequential(nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], 1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_projection(x)
        for block in self.blocks:
            x = block(x)
        return self.output_layer(x).squeeze(-1)


class MLPDecider(Decider):
    """The learned decider: hidden states of a few layers + top-k logit values -> continue-logit."""

    name = "mlp"
    learned = True

    def __init__(
        self,
        hidden_size: int,
        layers: list[int],
        topk: int = 100,
        hidden_dims: list[int] | None = None,
        expansion: int = 4,
        dropout: float = 0.1,
        normalize_input: bool = False,
        threshold: float = 0.9,
        previous_token: bool = False,
    ) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims or [512] * 6)
        self.feature_layers = tuple(int(i) for i in layers)
        self.needs_topk = topk
        self.hidden_size = hidden_size
        self.reads_previous_token = bool(previous_token)
        feature_size = len(self.feature_layers) * hidden_size * (2 if previous_token else 1)
        self.normalize_input = normalize_input
        if normalize_input:
            self.layer_norm_hidden_states = nn.LayerNorm(feature_size)
        self.logits_projection = nn.Linear(topk, hidden_size)
        self.combined_projection = nn.Linear(feature_size + hidden_size, hidden_dims[0])
        self.backbone = _Backbone(hidden_dims, expansion, dropout)
        # Stored for checkpoint compatibility; never trained (it is not a parameter).
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, topk_values: Tensor, features: Tensor) -> Tensor:
        dtype = self.logits_projection.weight.dtype
        features = features.to(dtype)
        if self.normalize_input:
            features = self.layer_norm_hidden_states(features)
        projected = self.logits_projection(topk_values.to(dtype))
        return self.backbone(self.combined_projection(torch.cat([features, projected], dim=-1)))

    def decide(self, topk_values, features, depth, labels, threshold, n, device):
        """The decide rule, for the core and the engine alike: a token continues iff
        sigmoid(logit) > τ (``threshold``: a float, one τ per token, or None = the model's)."""
        logits = self(topk_values, features).float()
        if threshold is None:
            tau = float(self.threshold)
        elif isinstance(threshold, Tensor):  # one τ per token (a compute budget)
            tau = threshold.to(device=logits.device, dtype=logits.dtype)
        else:
            tau = float(threshold)
        return torch.sigmoid(logits) > tau, logits


def default_decider_layers(num_layers: int) -> list[int]:
    """Four layers spread like the paper's 1.7B choice ([2, 10, 18, 26] of 28)."""
    picks = [round(num_layers * f) for f in (2 / 28, 10 / 28, 18 / 28, 26 / 28)]
    return sorted({min(max(p, 0), num_layers) for p in picks})


def build_decider(config: TaHConfig, hidden_size: int, num_layers: int) -> Decider:
    """Instantiate the decider named in ``config`` for a model of the given shape."""
    if config.decider == "never" or config.max_iter == 1:
        return NeverDecider()
    if config.decider == "always":
        return AlwaysDecider()
    if config.decider == "label":
        return LabelDecider()
    layers = config.decider_layers
    if layers is None:
        layers = default_decider_layers(num_layers)
    bad = [i for i in layers if not 0 <= i <= num_layers]
    if bad or not layers:
        raise ConfigError(
            f"decider_layers {list(layers)} out of range: this model has {num_layers} layers, so "
            f"hidden-state indices run from 0 (embeddings) to {num_layers} (final norm)"
        )
    return MLPDecider(
        hidden_size=hidden_size,
        layers=list(layers),
        topk=config.decider_topk,
        hidden_dims=config.decider_hidden_dims,
        expansion=config.decider_expansion,
        dropout=config.decider_dropout,
        normalize_input=config.decider_normalize_input,
        threshold=config.threshold,
        previous_token=config.decider_previous_token,
    )
