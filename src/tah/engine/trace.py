"""What a request may ask the engine to record beyond its tokens: the decider's probabilities,
log-probabilities (of generated and, with ``echo``, of prompt tokens) and a compute budget.

Why a separate object per request: most requests want none of it, and the step must not pay
for what nobody asked. A request without a :class:`TokenTrace` costs nothing; one with a trace
costs host work for its own tokens only (one extra device sync per step when some request
wants decider probabilities, one per token for log-probabilities).

Log-probabilities are ``log_softmax`` of the cumulative logits a token was drawn from (the
raw model distribution, before temperature and filters, as OpenAI and vLLM report them), so
they equal ``TaHForCausalLM``'s logits for the same tokens and iteration pattern. The prompt's
iteration pattern is the one the decider chooses at the request's τ while prefilling, the
same pattern ``TaHForCausalLM.forward`` picks over the prompt: the logprob of prompt token
``i`` comes from position ``i - 1``'s logits at its final depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tah.engine.state import DECODE, DRAFT, PROMPT
from tah.errors import ConfigError
from tah.model.budget import IterBudget
from tah.model.sampling import SamplingParams

if TYPE_CHECKING:
    from tah.engine.request import Request, TokenEvent
    from tah.engine.state import EngineState


@dataclass
class TokenTrace:
    budget: IterBudget | None = None
    decider_probs: bool = False  # report each token's decider probabilities
    logprobs: int | None = None  # alternatives per token; None = no logprobs
    echo: bool = False
    probs: list[float] = field(default_factory=list)  # decisions of the token in flight
    taus: list[float] = field(default_factory=list)  # ... and the τ each was compared with
    prompt_logprobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    prompt_depths: dict[int, int] = field(default_factory=dict)
    emitted: int = 0

    @property
    def wants_probs(self) -> bool:
        return self.decider_probs or self.budget is not None

    # ------------------------------------------------------------------ decisions
    def decision(
        self, prob: float, went: bool, depth: int, generated: bool, tau: float = float("nan")
    ) -> None:
        """A decider decision on one of this request's tokens (``generated``: the token it
        decides produces an output token, i.e. a decode token or the prompt's last)."""
        if generated:
            self.probs.append(prob)
            self.taus.append(tau)
            if depth == 1 and self.budget is not None:
                self.budget.observe(prob, went)
        elif depth == 1 and self.budget is not None:
            self.budget.observe_prompt([prob])

    # ------------------------------------------------------------------ output
    def on_emit(self, event: TokenEvent, token: int, logits: Tensor | None) -> None:
        """Attach what was asked for to the event carrying ``token``."""
        if self.decider_probs:
            event.decider_probs = [[round(p, 6) for p in self.probs]]
            event.decider_thresholds = [[round(t, 6) for t in self.taus]]
        self.probs, self.taus = [], []
        if self.logprobs is not None and logits is not None:
            event.logprobs = [logprob_entry(logits, token, self.logprobs)]
        if self.echo and self.emitted == 0:
            n = len(self.prompt_depths)
            event.prompt_iter_counts = [self.prompt_depths[p] for p in range(n)]
            event.prompt_logprobs = [self.prompt_logprobs.get(p) for p in range(n)]
        self.emitted += 1


def make_trace(engine: EngineState, params: SamplingParams) -> TokenTrace | None:
    """The trace ``params`` ask for, or None; raises ConfigError for a budget the model
    cannot steer."""
    budget = None
    if params.iter_budget is not None:
        if engine.kind != "mlp":
            raise ConfigError(
                f"iter_budget steers the MLP decider's threshold; this model's decider is "
                f"{engine.kind!r} (max_iter {engine.max_iter}): drop iter_budget or serve a "
                "TaH checkpoint with decider 'mlp'"
            )
        start = engine.threshold if params.threshold is None else params.threshold
        budget = IterBudget(params.iter_budget, start)
    probs = bool(params.decider_probs) and engine.kind == "mlp"
    if budget is None and not probs and params.logprobs is None and not params.echo:
        return None
    return TokenTrace(budget, probs, params.logprobs, bool(params.echo))


def logprob_entry(logits: Tensor, token: int, top: int) -> dict[str, Any]:
    """``{"token", "logprob", "top": [[id, logprob], ...]}`` for one position."""
    return logprob_entries(logits[None], [token], top)[0]


def logprob_entries(logits: Tensor, tokens: list[int], top: int) -> list[dict[str, Any]]:
    """One entry per row of ``logits`` (n, V) for the matching token of ``tokens``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    idx = torch.tensor(tokens, dtype=torch.long, device=lp.device)
    chosen = lp.gather(1, idx[:, None])[:, 0].tolist()
    tops: list[list[list[Any]]] = [[] for _ in tokens]
    if top > 0:
        values, ids = lp.topk(min(top, lp.shape[-1]), dim=-1)
        tops = [[[i, v] for i, v in zip(ri, rv)] for ri, rv in zip(ids.tolist(), values.tolist())]
    return [{"token": t, "logprob": c, "top": k} for t, c, k in zip(tokens, chosen, tops)]


# ---------------------------------------------------------------------- step hooks
def _traced(engine: EngineState, want) -> bool:
    return any(
        r is not None and r.trace is not None and want(r.trace)
        for r in engine.rows[: engine.n_rows]
    )


def record_decisions(engine: EngineState, builder, candidates: list[int], went: list[bool]) -> None:
    """After the step's sync: hand each traced request its tokens' decider probabilities
    (``engine.last_logits`` holds one per candidate head)."""
    logits = engine.last_logits
    if logits is None or not _traced(engine, lambda t: t.wants_probs):
        return
    probs = torch.sigmoid(logits).tolist()
    for j, h in enumerate(candidates):
        if builder.kind[h] == DRAFT:  # reported once the draft is kept (speculate.py)
            continue
        if builder.kind[h] == DECODE:
            req: Request = engine.rows[builder.info[h]]
            generated = True
        else:
            req, p = builder.info[h]
            generated = p == len(req.prompt) - 1
        trace = req.trace
        if trace is not None and trace.wants_probs:
            trace.decision(probs[j], went[h], builder.depth[h], generated, builder.thr[h])


def record_prompt(engine: EngineState, builder, cum: Tensor, went: list[bool]) -> None:
    """Prompt tokens at their final depth, for ``echo``: their depth and the logprob of the
    next prompt token under their logits."""
    if not _traced(engine, lambda t: t.echo):
        return
    groups: dict[int, tuple[Request, list[int], list[int]]] = {}
    for h in range(len(builder.flat)):
        if builder.kind[h] != PROMPT or went[h]:
            continue
        req, p = builder.info[h]
        if req.trace is None or not req.trace.echo:
            continue
        req.trace.prompt_depths[p] = builder.depth[h]
        if p + 1 < len(req.prompt):
            entry = groups.setdefault(id(req), (req, [], []))
            entry[1].append(p)
            entry[2].append(h)
    for req, positions, heads in groups.values():
        idx = torch.tensor(heads, dtype=torch.long, device=cum.device)
        nexts = [req.prompt[p + 1] for p in positions]
        top = req.trace.logprobs or 0
        for p, entry in zip(positions, logprob_entries(cum.index_select(0, idx), nexts, top)):
            req.trace.prompt_logprobs[p + 1] = entry
