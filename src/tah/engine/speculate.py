"""Speculative depth 1: while a token runs a deeper pass, run depth 1 of its likely successor.

Why: a token that thinks again costs its row one step that emits nothing (depth 1 decides to
go deeper, the next step runs depth 2). Under duo-causal attention the successor's depth-1 pass
reads only depth-1 entries, so it does not depend on the deeper pass and can ride along in the
same step. When token t at position p goes deeper, a draft d for position p + 1 is drawn from
t's depth-1 logits (the most likely token, or a sample with the request's own settings and
generator) and runs depth 1 in the next step beside t's deeper pass. When t's final token y is
known:

* greedy: the draft is kept iff y == d;
* sampling: y comes from exact speculative sampling (:func:`tah.model.sampling.
  speculative_choice`): d is kept with probability min(1, p(d) / q(d)), else y is drawn from
  max(0, p - q), so y follows t's final distribution p exactly;
* a kept draft already has its depth-1 logits and decider verdict: the row either emits the
  next token in the same step or sends it deeper (with a draft of its own), one step early;
* a rejected draft is dropped: its depth-1 key/value entry at p + 1 is past the row's length,
  so nothing reads it, and the real token's pass overwrites it.

Tokens and iteration counts are therefore the non-speculative ones (greedy: token for token;
sampling: in distribution). A draft runs only when the request may emit two more tokens, is
dropped when t goes deeper still (more than two depths), and its decider verdict and features
(for a decider that reads the previous token: the draft's previous token is t, whose depth-1
features the row carries) reach the request only once the draft is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tah.engine.state import DRAFT
from tah.model.sampling import speculative_choice

if TYPE_CHECKING:
    from tah.engine.request import TokenEvent
    from tah.engine.state import EngineState


def add_drafts(b: Any) -> None:
    """Depth 1 of every decoding row's draft, one token per row at its token's position + 1."""
    eng = b.engine
    rows = [i for i in range(eng.n_dec) if eng.draft[i] is not None]
    if not rows:
        return
    dev = eng.device
    rows_t = torch.tensor(rows, dtype=torch.long, device=dev)
    ids = torch.tensor([eng.draft[i] for i in rows], dtype=torch.long, device=dev)
    positions = [eng.lengths[i] + 1 for i in rows]
    pos_t = torch.tensor(positions, dtype=torch.long, device=dev)[:, None]
    step = eng.store.prefill_pass(rows_t, pos_t, max(positions) + 1, from_zero=False)
    start = b.seg.add(len(rows), 1, step)
    b.xs.append(eng.decoder.embed[ids])
    b.positions.append(pos_t.view(-1))
    for k, i in enumerate(rows):
        req = eng.rows[i]
        b.draft_head[i] = len(b.flat)
        b.head(start + k, 1, eng.cap_of(req), eng.threshold_of(req), DRAFT, i)
    eng.stats["drafts"] += len(rows)


def verify(eng: EngineState, b: Any, cum: Tensor, go_l: list[bool], tokens: list[int]):
    """Settle the drafts of the rows whose token is final: ``{row: accepted}``; a sampling
    row's token in ``tokens`` becomes its speculative-sampling choice."""
    verdict: dict[int, bool] = {}
    for i in b.draft_head:
        draft, eng.draft[i] = eng.draft[i], None
        if go_l[i]:  # the token goes deeper still: the draft is dropped
            continue
        req = eng.rows[i]
        if req.params.greedy:
            verdict[i] = tokens[i] == draft
            continue
        row = torch.tensor([i], dtype=torch.long, device=eng.device)
        target = eng.sampling_weights(cum[i : i + 1], row, [req])[0]
        drafted_from = eng.sampling_weights(eng.cum_buf[i : i + 1], row, [req])[0]
        tokens[i], verdict[i] = speculative_choice(target, drafted_from, draft, req.generator)
    return verdict


def launch(eng: EngineState, heads: list[tuple[int, int]], cum: Tensor, greedy_l: list[int]):
    """Draw drafts for rows whose token just left depth 1 for a deeper pass: ``heads`` holds
    (row, head whose depth-1 cumulative logits the draft is drawn from)."""
    heads = [(i, h) for i, h in heads if _may_draft(eng, i)]
    sampled = [(i, h) for i, h in heads if not eng.rows[i].params.greedy]
    drawn: dict[int, int] = {}
    if sampled:
        dev = eng.device
        idx = torch.tensor([h for _, h in sampled], dtype=torch.long, device=dev)
        rows_t = torch.tensor([i for i, _ in sampled], dtype=torch.long, device=dev)
        tokens = eng.draw(cum.index_select(0, idx), rows_t, [eng.rows[i] for i, _ in sampled])
        drawn = dict(zip((i for i, _ in sampled), tokens.tolist()))
    for i, h in heads:
        eng.draft[i] = drawn.get(i, greedy_l[h])


def _may_draft(eng: EngineState, row: int) -> bool:
    """The request may still emit two tokens, and its kind of decoding speculates."""
    req = eng.rows[row]
    if eng.speculate_mode != "all" and not req.params.greedy:
        return False
    return req.params.max_tokens - len(req.output) >= 2


def take_kept_draft(
    eng: EngineState,
    b: Any,
    i: int,
    step_out: tuple,
    events: list[TokenEvent],
) -> None:
    """Row ``i`` emitted its token, which equals its kept draft: apply the draft's depth-1
    pass (already run this step) as if it had run in the next step."""
    cum, greedy_l, go_l, slot_of, kept, soft = step_out
    req = eng.rows[i]
    h = b.draft_head[i]
    if h in b.draft_feats:  # the draft's features become the row's previous-token state
        eng.prev_feat[i] = b.draft_feats[h]
    if req.trace is not None and req.trace.wants_probs and eng.last_logits is not None:
        j = b.candidates.index(h)
        prob = float(torch.sigmoid(eng.last_logits[j]))
        req.trace.decision(prob, go_l[h], 1, True, b.thr[h])
    if req.finished:  # its token ended the request: the draft saved nothing
        return
    eng.stats["accepted"] += 1
    if go_l[h]:
        eng.phase[i] = 2
        eng.cum_buf[i] = kept[slot_of[h]]
        eng.x_next[i] = soft[slot_of[h]]
        launch(eng, [(i, h)], cum, greedy_l)
        return
    token = greedy_l[h]
    if not req.params.greedy:
        rows_t = torch.tensor([i], dtype=torch.long, device=eng.device)
        token = int(eng.draw(cum[h : h + 1], rows_t, [req])[0])
    eng.tok[i] = token
    eng.pos[i] += 1
    eng.lengths[i] += 1
    eng.emit(req, token, 1, events, cum[h] if req.trace else None)
