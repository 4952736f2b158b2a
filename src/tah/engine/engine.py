"""The batched TaH decode engine: continuous batching over a static per-depth KV store.

Why not ``TaHForCausalLM.generate`` (the reference loop): it pads every prompt to the longest,
grows its cache by concatenation, rebuilds dense masks each step, and keeps a finished row in
the batch until every row is done. A server needs requests that join and leave between steps,
fixed memory, and a deeper pass whose cost follows the number of tokens that think again.

One :meth:`Engine.step`:

1. admit waiting requests into free rows of the store (rows are kept compact: decoding rows
   are the prefix 0..n_dec-1, rows still prefilling follow);
2. run one fused forward (``step.py``) holding every row's next pass: each decoding row's
   token at its own depth (a token the decider sent deeper last step runs its next depth now,
   LoRA on for that row only, soft-embedding input, same position), the prompt tokens sent
   deeper last step, and the next chunk of prompt tokens. They share the matrix products;
   attention is per block, duo-causal for deep tokens, which are gathered, so depth 2 never
   runs over the whole batch, and a token that thinks again costs its row one more step
   instead of a second pass that stalls every other row; with ``speculate_depth1`` that step
   also runs depth 1 of a draft of the row's next token (``speculate.py``), which usually
   wins the step back;
3. run the decider on every token that may continue and sample the rows whose token is final,
   on the device; the host synchronises once per step (decisions and greedy tokens together,
   once more only when a request samples), never per layer or per depth;
4. stream the new tokens to each request's callback and free the rows of finished requests.

The semantics are exactly the core's (METHOD.md A.2-A.10), with the rules they share
(sampling, the decider's rule, duo-causal visibility) imported from ``tah.model``;
``tests/test_engine_*.py`` prove greedy tokens and per-token iteration counts equal to
``TaHForCausalLM.generate``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

import tah.engine.build as build
from tah.engine.kv import KVStore
from tah.engine.model import CompactDecoder
from tah.engine.options import COMPILE_MODES, SPECULATE_MODES
from tah.engine.request import (
    PREFILL,
    WAITING,
    Completion,
    Request,
    TokenEvent,
)
from tah.engine.rows import RowLifecycle
from tah.engine.step import run_step
from tah.engine.topk import topk_values
from tah.engine.trace import make_trace
from tah.errors import ConfigError, DataError
from tah.model.sampling import SamplingParams, filter_probs, make_generator, sample_rows

logger = logging.getLogger(__name__)


class Engine(RowLifecycle):
    """Continuous-batching decoder for Standard, AlwaysThink and TaH (MLP decider) models.

    Build with :meth:`from_tah_model`, :meth:`from_hf_model` or :meth:`from_pretrained`.
    ``max_batch`` rows of ``max_len`` positions are allocated up front for every depth.
    ``compile_mode`` (None = eager) runs the layer stack through ``torch.compile``; see
    :meth:`~tah.engine.model.CompactDecoder.enable_compile`. ``speculate_depth1`` runs depth 1
    of a token's likely successor while the token runs deeper (``tah.engine.speculate``):
    "greedy" for greedy requests (tokens identical to the core's, fewer steps), "all" also
    for sampled ones (the same distribution, other draws per seed than the core), or "off".
    """

    def __init__(
        self,
        decoder: CompactDecoder,
        *,
        decider: torch.nn.Module | None = None,
        max_iter: int = 1,
        threshold: float = 0.9,
        topk: int | None = 100,
        residual: bool = True,
        eos_token_ids: Sequence[int] = (),
        max_batch: int = 8,
        max_len: int | None = None,
        prefill_chunk: int = 512,
        seed: int = 0,
        tokenizer: Any = None,
        model_name: str = "tah",
        compile_mode: str | None = None,
        speculate_depth1: str | bool = "greedy",
    ) -> None:
        from tah.model.wrapper import soft_embedding

        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if compile_mode is not None:
            if compile_mode not in COMPILE_MODES:
                raise ConfigError(
                    f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}"
                )
            decoder.enable_compile(compile_mode)
        self.decoder = decoder
        self.shape = decoder.shape
        self.device = decoder.device
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.residual = residual
        self.topk = topk
        self._soft_embedding = soft_embedding
        self.eos_token_ids = tuple(int(e) for e in eos_token_ids)
        self.kind, self.decider = build.setup_decider(decider, max_iter, self.device)
        self.max_iter = max_iter if self.kind != "never" else 1
        self.threshold = float(threshold)
        self.capture = (
            tuple(getattr(self.decider, "feature_layers", ())) if self.kind == "mlp" else ()
        )
        self.decider_topk = int(getattr(self.decider, "needs_topk", 0) or 0)
        # While a token runs deeper, run depth 1 of its likely successor alongside (speculate.py).
        if isinstance(speculate_depth1, bool):  # on = the default mode
            speculate_depth1 = "greedy" if speculate_depth1 else "off"
        if speculate_depth1 not in SPECULATE_MODES:
            raise ConfigError(
                f"speculate_depth1 must be one of {SPECULATE_MODES}, got {speculate_depth1!r}"
            )
        self.speculate_mode = speculate_depth1
        self.speculate = speculate_depth1 != "off" and self.max_iter > 1
        positions = decoder.rope_cos.shape[0] - 1  # the table has one spare position
        self.max_len = min(max_len or min(positions, 2048), positions)
        if self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2, got {self.max_len}")
        self.max_batch = max_batch
        self.max_active: int | None = None  # optional lower cap on rows in use (benchmarks)
        self.prefill_chunk = prefill_chunk
        self.store = KVStore(
            self.shape.num_layers,
            self.shape.num_kv_heads,
            self.shape.head_dim,
            max_batch,
            self.max_len,
            self.max_iter,
            device=self.device,
            dtype=decoder.dtype,
        )
        self._allocate_rows(max_batch)
        self.waiting: deque[Request] = deque()
        self.requests: dict[str, Request] = {}
        self._inbox: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._seed_rng = torch.Generator().manual_seed(int(seed))
        self._thread: threading.Thread | None = None
        self._running = False
        self.last_logits: Tensor | None = None  # decider logits of the last decide()
        self.stats = dict.fromkeys(
            ("steps", "tokens", "iterations", "prompt_tokens", "deep_rows", "drafts", "accepted"), 0
        )

    def _allocate_rows(self, max_batch: int) -> None:
        """Per-row state on the device (moved with its row on compaction) and host mirrors."""
        dev, dtype = self.device, self.decoder.dtype
        # Per-row state on the device (moved with the row on compaction).
        self.tok = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.pos = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.topk_row = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.temp = torch.ones(max_batch, dtype=torch.float32, device=dev)
        self.topp = torch.ones(max_batch, dtype=torch.float32, device=dev)
        self.minp = torch.zeros(max_batch, dtype=torch.float32, device=dev)
        # Tokens that continue: their cumulative logits and the soft embedding of the next pass.
        vocab = self.shape.vocab_size
        n_cont = max_batch if self.max_iter > 1 else 0
        self.cum_buf = torch.zeros((n_cont, vocab), dtype=dtype, device=dev)
        self.x_next = torch.zeros((n_cont, self.shape.hidden_size), dtype=dtype, device=dev)
        self._row_tensors = [
            self.tok,
            self.pos,
            self.topk_row,
            self.temp,
            self.topp,
            self.minp,
        ]
        if n_cont:
            self._row_tensors += [self.cum_buf, self.x_next]
        # A decider that reads the previous token: each row's last depth-1 decider features.
        self.reads_previous = bool(getattr(self.decider, "reads_previous_token", False))
        width = len(self.capture) * self.shape.hidden_size if self.reads_previous else 0
        self.prev_feat = torch.zeros(
            (max_batch if self.reads_previous else 0, width), dtype=dtype, device=dev
        )
        if self.reads_previous:
            self._row_tensors.append(self.prev_feat)
        # Host mirrors.
        self.rows: list[Request | None] = [None] * max_batch
        self.lengths = [0] * max_batch  # position of the token each row is working on
        self.phase = [1] * max_batch  # depth that token runs next
        self.draft: list[int | None] = [None] * max_batch  # speculated next token (speculate.py)
        self.n_dec = 0  # decoding rows: 0..n_dec-1
        self.n_rows = 0  # occupied rows: decoding, then prefilling

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tah_model(cls, model, **kwargs: Any) -> Engine:
        """Serve an in-memory ``TaHForCausalLM`` (weights are read from its module tree)."""
        return build.from_tah_model(cls, model, **kwargs)

    @classmethod
    def from_hf_model(cls, hf_model, tokenizer: Any = None, **kwargs: Any) -> Engine:
        """Serve a plain Hugging Face causal LM (a Standard model: one pass per token)."""
        return build.from_hf_model(cls, hf_model, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str, threshold: float | None = None, **kwargs: Any) -> Engine:
        """Load a TaH checkpoint (or a plain HF directory = Standard model) and serve it."""
        return build.from_pretrained(cls, path, threshold, **kwargs)

    # ------------------------------------------------------------------ public API
    def add_request(
        self,
        prompt: Sequence[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        callback: Callable[[TokenEvent], None] | None = None,
    ) -> Request:
        """Queue a request (thread-safe). Raises DataError/ConfigError for a bad one."""
        params = params or SamplingParams()
        params.validate()
        prompt = [int(t) for t in prompt]
        self.check_prompt(len(prompt), params.max_tokens)
        vocab = self.shape.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise DataError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        req = Request(request_id or f"req-{uuid.uuid4().hex[:16]}", prompt, params, callback)
        req.trace = make_trace(self, params)
        if params.stop_token_ids is not None:
            req.stop_ids = frozenset(int(t) for t in params.stop_token_ids)
        if not params.ignore_eos:
            req.stop_ids = req.stop_ids | frozenset(self.eos_token_ids)
        with self._wake:
            if not params.greedy:
                seed = params.seed
                if seed is None:  # drawn from the engine's seed, so runs are reproducible
                    seed = int(torch.randint(0, 2**62, (1,), generator=self._seed_rng))
                req.generator = make_generator(seed, self.device)
            self._inbox.append(("add", req))
            self._wake.notify()
        return req

    def check_prompt(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise DataError if the prompt (plus max_tokens new ones) does not fit the context."""
        if prompt_tokens < 1:
            raise DataError("the prompt is empty: give at least one token")
        if prompt_tokens + max_tokens > self.max_len:
            raise DataError(
                f"prompt of {prompt_tokens} tokens plus max_tokens={max_tokens} exceeds the "
                f"context of {self.max_len} tokens; shorten the prompt or lower max_tokens"
            )

    def abort(self, request_id: str) -> None:
        """Stop a request and free its row at the next step (thread-safe, idempotent)."""
        with self._wake:
            self._inbox.append(("abort", request_id))
            self._wake.notify()

    def has_work(self) -> bool:
        return bool(self._inbox or self.waiting or self.n_rows)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Offline batch generation: run steps until every prompt is done (not thread-safe
        with a running background loop)."""
        if self._running:
            raise ConfigError("generate() cannot run while the background loop is running")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        reqs = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        while not all(r.finished for r in reqs):
            self.step()
        return [Completion(r.output, r.iter_counts, r.finish_reason, len(r.prompt)) for r in reqs]

    # ------------------------------------------------------------------ background loop
    def start(self) -> None:
        """Step in a background thread whenever there is work."""
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="tah-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread; unfinished requests end with reason 'abort'."""
        if self._thread is None:
            return
        with self._wake:
            self._running = False
            self._wake.notify()
        self._thread.join(timeout)
        self._thread = None
        self._fail_all("abort", None)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._running and not self.has_work():
                    self._wake.wait(0.5)
                if not self._running:
                    return
            try:
                self.step()
            except Exception as exc:  # keep serving: fail the requests in flight, log it
                logger.exception("engine step failed")
                self._fail_all("error", f"{type(exc).__name__}: {exc}")

    def _fail_all(self, reason: str, error: str | None) -> None:
        with self._wake:
            inbox = list(self._inbox)
            self._inbox.clear()
        pending = [r for kind, r in inbox if kind == "add"]
        for req in [*(r for r in self.rows if r is not None), *self.waiting, *pending]:
            req.error = error
            self._finish(req, reason)
        self.rows = [None] * self.max_batch
        self.n_dec = self.n_rows = 0
        self.waiting.clear()
        self.requests.clear()

    # ------------------------------------------------------------------ the step
    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Admit waiting requests, run one fused forward (see ``step.py``), free finished
        rows; return the events of this step."""
        events: list[TokenEvent] = []
        self._drain_inbox(events)
        self._admit()
        if self.n_rows:
            run_step(self, events)
        self._release_finished()
        self.stats["steps"] += 1
        return events

    def _drain_inbox(self, events: list[TokenEvent]) -> None:
        with self._wake:
            items = list(self._inbox)
            self._inbox.clear()
        for kind, item in items:
            if kind == "add":
                self.requests[item.request_id] = item
                self.waiting.append(item)
                continue
            req = self.requests.get(item)
            if req is None or req.finished:
                continue
            if req.state == WAITING:
                self.waiting.remove(req)
                self.requests.pop(req.request_id, None)
                self._finish(req, "abort", events)
            else:
                self._finish(req, "abort", events)
                self._release_row(req.row)

    def _admit(self) -> None:
        limit = min(self.max_batch, self.max_active or self.max_batch)
        while self.waiting and self.n_rows < limit:
            req = self.waiting.popleft()
            row = self.n_rows
            self.n_rows += 1
            req.row, req.state = row, PREFILL
            self.rows[row] = req
            self.lengths[row] = 0
            self.store.reset_row(row)
            p = req.params
            self.topk_row[row] = min(p.top_k, self.shape.vocab_size)  # any k >= vocab is off
            self.temp[row] = p.temperature if p.temperature > 0 else 1.0
            self.topp[row] = p.top_p
            self.minp[row] = p.min_p
            self.pos[row] = 0
            self.phase[row] = 1
            self.draft[row] = None
            if self.reads_previous:
                self.prev_feat[row] = 0  # a request's first token has no previous one

    def cap_of(self, req: Request) -> int:
        """The deepest depth ``req`` may run (its ``max_iter`` within the model's)."""
        m = req.params.max_iter
        return self.max_iter if m is None else min(m, self.max_iter)

    def threshold_of(self, req: Request) -> float:
        if req.trace is not None and req.trace.budget is not None:
            budget = req.trace.budget
            return budget.prompt_threshold() if req.state == PREFILL else budget.threshold()
        return self.threshold if req.params.threshold is None else req.params.threshold

    # ------------------------------------------------------------------ TaH pieces
    def soft_embedding(self, cum: Tensor) -> Tensor:
        """Input of a deeper pass: softmax over the top-k cumulative logits, mixing rows of E."""
        return self._soft_embedding(cum, self.decoder.embed, self.topk)

    def decide(
        self, cum: Tensor, feats: dict[int, Tensor], thr: Tensor, previous: Tensor | None = None
    ) -> Tensor:
        """Continue-decision per token (before the depth cap): always, or the MLP decider's
        own rule (:meth:`~tah.model.deciders.MLPDecider.decide`) at per-token τ ``thr``.
        ``previous``: the previous tokens' depth-1 features, for a decider that reads them."""
        self.last_logits = None
        if self.kind == "always":
            return torch.ones(cum.shape[0], dtype=torch.bool, device=cum.device)
        values = topk_values(cum, self.decider_topk)  # exact, cheaper over a long vocabulary
        features = torch.cat([feats[i] for i in self.capture], dim=-1)
        if previous is not None:
            features = torch.cat([features, previous.to(features.dtype)], dim=-1)
        go, logits = self.decider.decide(values, features, 1, None, thr, cum.shape[0], cum.device)
        self.last_logits = logits  # read by trace.record_decisions if needed
        return go

    # ------------------------------------------------------------------ sampling and output
    def draw(self, logits: Tensor, rows: Tensor, reqs: list[Request]) -> Tensor:
        """Sample one token per row with each request's settings and generator.

        If the batched draw fails, the rows are drawn one by one and only a request whose own
        draw fails is marked failed (``req.error``; :meth:`emit` then ends it with reason
        'error'), so one bad request never fails the others in the step.
        """
        try:
            return self._draw(logits, rows, reqs)
        except Exception:
            logger.warning("batched sampling failed; drawing the %d rows one by one", len(reqs))
        tokens = logits.argmax(dim=-1)
        for i, req in enumerate(reqs):
            try:
                tokens[i] = self._draw(logits[i : i + 1], rows[i : i + 1], [req])[0]
            except Exception as exc:
                logger.error("sampling failed for request %s: %r", req.request_id, exc)
                req.error = f"{type(exc).__name__}: {exc}"
        return tokens

    def _draw(self, logits: Tensor, rows: Tensor, reqs: list[Request]) -> Tensor:
        return sample_rows(self.sampling_weights(logits, rows, reqs), [r.generator for r in reqs])

    def sampling_weights(self, logits: Tensor, rows: Tensor, reqs: list[Request]) -> Tensor:
        """The weights the rows' tokens are drawn from (each request's own filters)."""
        ps = [r.params for r in reqs]
        return filter_probs(
            logits,
            self.temp.index_select(0, rows),
            self.topk_row.index_select(0, rows),
            self.topp.index_select(0, rows),
            self.minp.index_select(0, rows),
            any_min_p=any(p.min_p > 0 for p in ps),
            any_top_k=any(p.top_k > 0 for p in ps),
            any_top_p=any(p.top_p < 1 for p in ps),
        )
