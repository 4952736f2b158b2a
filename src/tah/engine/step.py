"""One engine step: a single fused forward over every row's next pass.

Why one forward: on any hardware a small-batch decoder pass costs mostly the reading of the
weights, so the step reads them once for all the work it has, and the work that TaH adds
(tokens thinking again) rides along instead of costing passes of its own. A step's tokens are:

* decode rows (the prefix 0..n_dec-1 of the store), one token each at its own depth: depth 1
  for a new token, depth d > 1 for a token the decider sent deeper in the previous step (its
  input is the soft embedding kept from then, its LoRA is on, its logits add to the kept sum);
* prompt tokens of prefilling rows that the decider sent deeper, packed per row, one depth
  further than last step;
* the next chunk of prompt tokens (depth 1) of the prefilling rows, oldest first, up to the
  prefill budget.

Every token keeps its own RoPE position; :class:`~tah.engine.kv.Segments` gives each block its
own attention (duo-causal where deep), so the result per token is exactly that of the core's
depth loop (METHOD.md A.9-A.10): a deep pass of chunk c runs one step after chunk c's depth-1
pass and sees every earlier entry at its depth or below, because earlier chunks ran each depth
earlier still. After the forward the decider runs on every token that may continue, the step
synchronises with the host once (decisions and greedy tokens together), and the tokens that
continue keep their cumulative logits and next input for the following step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tah.engine.kv import Segments
from tah.engine.request import RUNNING, LastToken, Pending
from tah.engine.speculate import add_drafts, launch, take_kept_draft, verify
from tah.engine.state import DECODE, DRAFT, PROMPT
from tah.engine.trace import record_decisions, record_prompt

if TYPE_CHECKING:
    from tah.engine.request import Request, TokenEvent
    from tah.engine.state import EngineState


class StepBuilder:
    """Collects the step's blocks and the tokens that need logits ("heads")."""

    def __init__(self, engine: EngineState) -> None:
        self.engine = engine
        self.seg = Segments()
        self.xs: list[Tensor] = []
        self.positions: list[Tensor] = []
        self.lora: list[tuple[int, int]] = []  # runs (start, end) of flat tokens with LoRA on
        # Per head: flat token index, depth just run, depth cap, threshold, kind, info.
        self.flat: list[int] = []
        self.depth: list[int] = []
        self.cap: list[int] = []
        self.thr: list[float] = []
        self.kind: list[int] = []
        self.info: list = []
        # Heads whose logits add to an earlier sum: head indices and those sums.
        self.prev_heads: list[Tensor] = []
        self.prev_cum: list[Tensor] = []
        # A decode-only step run padded (graphs.py): (shape, x, positions, write_pos, deep).
        self.padded: tuple | None = None
        # Speculation (speculate.py): row -> head of its draft; the decider's candidate heads;
        # a draft head's own depth-1 features (a decider reading the previous token).
        self.draft_head: dict[int, int] = {}
        self.candidates: list[int] = []
        self.draft_feats: dict[int, Tensor] = {}

    def head(self, flat: int, depth: int, cap: int, thr: float, kind: int, info) -> None:
        self.flat.append(flat)
        self.depth.append(depth)
        self.cap.append(cap)
        self.thr.append(thr)
        self.kind.append(kind)
        self.info.append(info)

    # ------------------------------------------------------------------ blocks
    def add_decode(self) -> None:
        eng = self.engine
        n, dev = eng.n_dec, eng.device
        reqs = eng.rows[:n]
        phases = eng.phase[:n]
        cur = eng.lengths[:n]
        key_len = max(cur) + 1
        positions = eng.pos[:n, None]
        shallow = [i for i in range(n) if phases[i] == 1]
        by_depth: dict[int, list[int]] = {}
        for i in range(n):
            if phases[i] > 1:
                by_depth.setdefault(phases[i], []).append(i)
        x = eng.decoder.embed[eng.tok[:n]]
        write_pos = positions
        groups: list[tuple[int, Tensor]] = []
        if by_depth:
            deep = sorted(i for rows in by_depth.values() for i in rows)
            deep_t = torch.tensor(deep, dtype=torch.long, device=dev)
            x = x.index_copy(0, deep_t, eng.x_next.index_select(0, deep_t))
            is_deep = torch.zeros(n, dtype=torch.bool, device=dev)
            is_deep[deep_t] = True
            write_pos = positions.masked_fill(is_deep[:, None], eng.max_len)
            groups = [(d - 1, rows) for d, rows in sorted(by_depth.items())]
            eng.stats["deep_rows"] += len(deep)
        graphs = getattr(eng, "graphs", None)
        shape = None
        drafts = eng.speculate and any(d is not None for d in eng.draft[:n])
        if graphs is not None and eng.n_rows == n and not drafts:  # decode only
            deep_rows = [i for _, rows in groups for i in rows]
            shape = graphs.shape_for(n, deep_rows, key_len, max(by_depth, default=1) - 1)
        if shape is not None:
            self.padded = (shape, x, eng.pos[:n], write_pos.view(-1), sorted(deep_rows))
            step = None
        else:
            need_mask = any(cur[i] + 1 != key_len for i in shallow)
            step = eng.store.decode_pass(
                n, positions, key_len, bool(shallow), write_pos, need_mask, groups
            )
        start = self.seg.add(n, 1, step)
        self.xs.append(x)
        self.positions.append(eng.pos[:n])
        if by_depth:
            self.lora.extend((start + lo, start + hi) for lo, hi in runs_of(deep))
            self.prev_heads.append(deep_t + len(self.flat))
            self.prev_cum.append(eng.cum_buf.index_select(0, deep_t))
        for i, req in enumerate(reqs):
            self.head(start + i, phases[i], eng.cap_of(req), eng.threshold_of(req), DECODE, i)

    def add_prompt_deep(self, entries: list[tuple[Request, Pending]], depth: int) -> None:
        """Prompt tokens running ``depth``, packed per row (entries in row order)."""
        eng = self.engine
        dev = eng.device
        rows, widths, tok_row, tok_col, tok_pos = [], [], [], [], []
        for req, group in entries:
            if not rows or rows[-1] != req.row:
                rows.append(req.row)
                widths.append(0)
            for p in group.positions:
                tok_row.append(len(rows) - 1)
                tok_col.append(widths[-1])
                tok_pos.append(p)
                widths[-1] += 1
        width = max(widths)
        hidden = eng.shape.hidden_size
        grid_r = torch.tensor(tok_row, dtype=torch.long, device=dev)
        grid_c = torch.tensor(tok_col, dtype=torch.long, device=dev)
        x = eng.decoder.embed.new_zeros((len(rows), width, hidden))
        x.index_put_((grid_r, grid_c), torch.cat([g.x for _, g in entries]))
        grid_pos = torch.full((len(rows), width), eng.max_len, dtype=torch.long, device=dev)
        grid_pos.index_put_((grid_r, grid_c), torch.tensor(tok_pos, dtype=torch.long, device=dev))
        rows_t = torch.tensor(rows, dtype=torch.long, device=dev)
        step = eng.store.deep_pass(depth - 1, rows_t, grid_pos, max(tok_pos) + 1)
        start = self.seg.add(len(rows), width, step)
        self.xs.append(x.view(-1, hidden))
        self.positions.append(grid_pos.view(-1))
        self.lora.append((start, start + len(rows) * width))
        first = len(self.flat)
        k = 0
        for req, group in entries:
            cap, thr = eng.cap_of(req), eng.threshold_of(req)
            for p in group.positions:
                flat = start + tok_row[k] * width + tok_col[k]
                self.head(flat, depth, cap, thr, PROMPT, (req, p))
                k += 1
        self.prev_heads.append(torch.arange(first, first + k, device=dev))
        self.prev_cum.append(torch.cat([g.cum for _, g in entries]))

    def add_prompt_chunks(self, budget: int) -> None:
        """The next prompt chunk (depth 1) of each prefilling row, oldest first."""
        eng = self.engine
        plan: list[tuple[int, Request, int, int]] = []
        for row in range(eng.n_dec, eng.n_rows):
            req = eng.rows[row]
            if budget <= 0:
                break
            if req is None or req.prefilled >= len(req.prompt):
                continue
            end = min(len(req.prompt), req.prefilled + budget)
            plan.append((row, req, req.prefilled, end))
            budget -= end - req.prefilled
        if not plan:
            return
        dev = eng.device
        width = max(end - start for _, _, start, end in plan)
        ids = [[0] * width for _ in plan]
        pos = [[eng.max_len] * width for _ in plan]
        for r, (_, req, start, end) in enumerate(plan):
            ids[r][: end - start] = req.prompt[start:end]
            pos[r][: end - start] = range(start, end)
        ids_t = torch.tensor(ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(pos, dtype=torch.long, device=dev)
        rows_t = torch.tensor([row for row, *_ in plan], dtype=torch.long, device=dev)
        key_len = max(end for *_, end in plan)
        from_zero = all(start == 0 for _, _, start, _ in plan)
        step = eng.store.prefill_pass(rows_t, pos_t, key_len, from_zero)
        begin = self.seg.add(len(plan), width, step)
        self.xs.append(eng.decoder.embed[ids_t].view(-1, eng.shape.hidden_size))
        self.positions.append(pos_t.view(-1))
        for r, (row, req, start, end) in enumerate(plan):
            cap, thr = eng.cap_of(req), eng.threshold_of(req)
            may_iterate = eng.kind != "never" and cap > 1
            last = len(req.prompt) - 1
            echo = req.trace is not None and req.trace.echo
            for p in range(start, end):
                if may_iterate or p == last or echo:
                    self.head(begin + r * width + p - start, 1, cap, thr, PROMPT, (req, p))
            req.prefilled = end
            eng.lengths[row] = end
            eng.stats["prompt_tokens"] += end - start


def previous_token_features(eng: EngineState, b: StepBuilder, cand: list[int], feats) -> Tensor:
    """Per candidate head, its request's previous token's depth-1 decider features, and each
    row's carried features moved on to its last token of this step.

    With max_iter 2 every candidate runs depth 1 (the engine refuses deeper deciders reading the
    previous token). A prompt token's previous token is the head before it in this step's chunk,
    or for the chunk's first token the row's carried state (zeros for a request's first token);
    a decode token's is the row's carried state: the last token that ran depth 1."""
    own = torch.cat([feats[i] for i in eng.capture], dim=-1)
    carried = eng.prev_feat.shape[0]
    source: list[int] = []  # < carried: a row of prev_feat; else carried + a candidate index
    last_of_row: dict[int, int] = {}
    for j, h in enumerate(cand):
        if b.kind[h] == DRAFT:  # previous: the row's carried token; moves on once kept
            source.append(b.info[h])
            b.draft_feats[h] = own[j]
            continue
        row = b.info[h] if b.kind[h] == DECODE else b.info[h][0].row
        before = last_of_row.get(row)  # prompt heads of a row come in position order
        source.append(row if before is None else carried + before)
        last_of_row[row] = j
    dev = own.device
    table = torch.cat([eng.prev_feat, own.to(eng.prev_feat.dtype)])
    previous = table.index_select(0, torch.tensor(source, dtype=torch.long, device=dev))
    rows = torch.tensor(list(last_of_row), dtype=torch.long, device=dev)
    lasts = torch.tensor(list(last_of_row.values()), dtype=torch.long, device=dev)
    eng.prev_feat.index_copy_(0, rows, own.index_select(0, lasts).to(eng.prev_feat.dtype))
    return previous


def runs_of(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as maximal runs of consecutive values, (start, end) half-open."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def lora_tokens(runs: list[tuple[int, int]], device, max_runs: int = 2):
    """The tokens with LoRA on, in the cheapest form for ``CompactDecoder._add_lora``: a few
    runs stay runs (slices: no gather or scatter), many become one index tensor."""
    if not runs:
        return None
    merged = [runs[0]]
    for lo, hi in runs[1:]:  # runs come in increasing order; join touching ones
        if merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    if len(merged) <= max_runs:
        return tuple(merged)
    return torch.cat([torch.arange(lo, hi, device=device) for lo, hi in merged])


def run_step(engine: EngineState, events: list[TokenEvent]) -> None:
    """Build and run one fused forward, then apply its outcome (see the module docstring)."""
    eng = engine
    b = StepBuilder(eng)
    if eng.n_dec:
        b.add_decode()
        if eng.speculate:
            add_drafts(b)
    by_depth: dict[int, list] = {}
    for row in range(eng.n_dec, eng.n_rows):
        req = eng.rows[row]
        for group in req.pending:
            by_depth.setdefault(group.depth, []).append((req, group))
        req.pending = []
    for depth in sorted(by_depth):
        b.add_prompt_deep(by_depth[depth], depth)
    b.add_prompt_chunks(eng.prefill_chunk)
    if not b.xs:
        return
    dev = eng.device
    may_continue = eng.kind != "never" and any(d < c for d, c in zip(b.depth, b.cap))
    x = b.xs[0] if len(b.xs) == 1 else torch.cat(b.xs)
    positions = b.positions[0] if len(b.positions) == 1 else torch.cat(b.positions)
    lora = lora_tokens(b.lora, dev)
    capture = eng.capture if may_continue else ()
    if b.padded is not None:
        hidden, captured = eng.graphs.run(*b.padded[1:], b.padded[0], capture)
    else:
        hidden, captured = eng.decoder.forward_hidden(
            x, positions, b.seg.attend, lora_rows=lora, capture=capture
        )
    if not b.flat:
        return
    heads = torch.tensor(b.flat, dtype=torch.long, device=dev)
    cum = eng.decoder.logits(hidden.index_select(0, heads))
    if b.prev_heads and eng.residual:
        cum.index_add_(0, torch.cat(b.prev_heads), torch.cat(b.prev_cum))
    greedy = cum.argmax(dim=-1)
    n_heads = len(b.flat)
    if may_continue:
        cand = b.candidates = [h for h in range(n_heads) if b.depth[h] < b.cap[h]]
        cand_t = torch.tensor(cand, dtype=torch.long, device=dev)
        feats = {i: c.index_select(0, heads.index_select(0, cand_t)) for i, c in captured.items()}
        thr = torch.tensor([b.thr[h] for h in cand], dtype=torch.float32, device=dev)
        previous = previous_token_features(eng, b, cand, feats) if eng.reads_previous else None
        go_cand = eng.decide(cum.index_select(0, cand_t), feats, thr, previous)
        go = torch.zeros(n_heads, dtype=torch.bool, device=dev).index_copy(0, cand_t, go_cand)
        both = torch.stack([greedy, go.long()]).tolist()  # the step's one host sync
        greedy_l, go_l = both[0], [bool(g) for g in both[1]]
        record_decisions(eng, b, cand, go_l)  # only for requests that asked (trace.py)
    else:
        go = None
        greedy_l, go_l = greedy.tolist(), [False] * n_heads

    # Tokens that continue: keep their sums and next inputs.
    go_heads = [h for h in range(n_heads) if go_l[h]]
    slot_of = {h: j for j, h in enumerate(go_heads)}
    kept = soft = None
    if go_heads:
        go_t = torch.tensor(go_heads, dtype=torch.long, device=dev)
        kept = cum.index_select(0, go_t)
        soft = eng.soft_embedding(kept)
    _finish_decode(eng, b, cum, greedy, go, greedy_l, go_l, slot_of, kept, soft, events)
    _finish_prompt(eng, b, cum, greedy_l, go_l, slot_of, kept, soft)
    record_prompt(eng, b, cum, go_l)
    _start_decoding(eng, events)


def _finish_decode(eng, b, cum, greedy, go, greedy_l, go_l, slot_of, kept, soft, events) -> None:
    n = eng.n_dec
    if not n:
        return
    dev = eng.device
    reqs = eng.rows[:n]
    cont = [i for i in range(n) if go_l[i]]
    if cont:
        rows_t = torch.tensor(cont, dtype=torch.long, device=dev)
        src = torch.tensor([slot_of[i] for i in cont], dtype=torch.long, device=dev)
        eng.cum_buf.index_copy_(0, rows_t, kept.index_select(0, src))
        eng.x_next.index_copy_(0, rows_t, soft.index_select(0, src))
    tokens = greedy[:n]
    token_list = greedy_l[:n]
    sampled = [
        i for i in range(n) if not go_l[i] and not reqs[i].params.greedy and i not in b.draft_head
    ]
    if sampled:
        idx = torch.tensor(sampled, dtype=torch.long, device=dev)
        drawn = eng.draw(cum.index_select(0, idx), idx, [reqs[i] for i in sampled])
        tokens = tokens.index_copy(0, idx, drawn)
        for i, t in zip(sampled, drawn.tolist()):
            token_list[i] = t
    kept_drafts: dict[int, bool] = {}
    if b.draft_head:
        kept_drafts = verify(eng, b, cum, go_l, token_list)
        fix = [i for i in kept_drafts if not reqs[i].params.greedy]
        if fix:  # sampling rows: the speculative-sampling choice
            idx = torch.tensor(fix, dtype=torch.long, device=dev)
            chosen = torch.tensor([token_list[i] for i in fix], dtype=torch.long, device=dev)
            tokens = tokens.index_copy(0, idx, chosen)
    if go is None:
        eng.tok[:n] = tokens
        eng.pos[:n] += 1
    else:
        go_dec = go[:n]
        eng.tok[:n] = torch.where(go_dec, eng.tok[:n], tokens)
        eng.pos[:n] += (~go_dec).long()
    drafts_from: list[tuple[int, int]] = []  # (row, head): rows whose token left depth 1
    for i in range(n):
        if go_l[i]:
            eng.phase[i] += 1
            if eng.speculate and eng.phase[i] == 2:
                drafts_from.append((i, i))
            continue
        count = eng.phase[i]
        eng.phase[i] = 1
        eng.lengths[i] += 1
        eng.emit(reqs[i], token_list[i], count, events, cum[i] if reqs[i].trace else None)
        if kept_drafts.get(i):
            take_kept_draft(eng, b, i, (cum, greedy_l, go_l, slot_of, kept, soft), events)
    if drafts_from:
        launch(eng, drafts_from, cum, greedy_l)


def _finish_prompt(eng, b, cum, greedy_l, go_l, slot_of, kept, soft) -> None:
    dev = eng.device
    groups: dict[tuple[int, int], tuple] = {}  # (id(req), depth) -> (req, positions, slots)
    for h in range(len(b.flat)):
        if b.kind[h] != PROMPT:
            continue
        req, p = b.info[h]
        if go_l[h]:
            key = (id(req), b.depth[h] + 1)
            entry = groups.setdefault(key, (req, [], []))
            entry[1].append(p)
            entry[2].append(slot_of[h])
        elif p == len(req.prompt) - 1:
            req.last = LastToken(cum[h : h + 1], greedy_l[h], b.depth[h])
    for (_, depth), (req, positions, slots) in groups.items():
        idx = torch.tensor(slots, dtype=torch.long, device=dev)
        req.pending.append(
            Pending(positions, depth, kept.index_select(0, idx), soft.index_select(0, idx))
        )
    for req in {id(r): r for r, *_ in groups.values()}.values():
        req.pending.sort(key=lambda g: g.depth)


def _start_decoding(eng, events) -> None:
    """Prefilling rows whose prompt is complete (every token at its final depth) sample
    their first token and join the decoding prefix, in row order."""
    while eng.n_dec < eng.n_rows:
        row = eng.n_dec
        req = eng.rows[row]
        if req.prefilled < len(req.prompt) or req.pending or req.last is None:
            return
        last, req.last = req.last, None
        token = last.greedy
        if not req.params.greedy:
            rows_t = torch.tensor([row], dtype=torch.long, device=eng.device)
            token = int(eng.draw(last.cum, rows_t, [req])[0])
        eng.tok[row] = token
        eng.pos[row] = len(req.prompt)
        eng.lengths[row] = len(req.prompt)
        eng.phase[row] = 1
        eng.n_dec += 1
        req.state = RUNNING
        eng.emit(req, token, last.count, events, last.cum[0])
