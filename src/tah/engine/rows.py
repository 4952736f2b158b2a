"""What happens to a request's row once the step has its tokens: tokens handed to the request
(and its callback), requests finished, rows freed and the row table kept compact.

Why apart from ``engine.py``: this is the engine's bookkeeping of rows and requests, which
the step loop calls but never needs to read.
"""

from __future__ import annotations

import logging
import time

from torch import Tensor

from tah.engine.request import FINISHED, Request, TokenEvent

logger = logging.getLogger("tah.engine.engine")


class RowLifecycle:
    """Mixed into :class:`~tah.engine.engine.Engine` (which owns the attributes used here)."""

    def emit(
        self,
        req: Request,
        token: int,
        count: int,
        events: list[TokenEvent],
        logits: Tensor | None = None,
    ) -> None:
        """Hand ``token`` (drawn from ``logits``, its cumulative logits) to its request."""
        if req.error is not None:  # its draw failed (see draw): end it alone, with the error
            self._finish(req, "error", events)
            return
        now = time.perf_counter()
        if req.first_token_at is None:
            req.first_token_at = now
        req.output.append(token)
        req.iter_counts.append(count)
        self.stats["tokens"] += 1
        self.stats["iterations"] += count
        reason = None
        if token in req.stop_ids:
            reason = "stop"
        elif len(req.output) >= req.params.max_tokens:
            reason = "length"
        event = TokenEvent(req.request_id, [token], [count])
        if req.trace is not None:
            req.trace.on_emit(event, token, logits)
        if reason is not None:
            req.finish_reason = reason
            event.finished, event.finish_reason = True, reason
            req.state = FINISHED
            req.finished_at = now
        events.append(event)
        self._deliver(req, event)
        if reason is not None:
            req.done.set()

    def _finish(self, req: Request, reason: str, events: list[TokenEvent] | None = None) -> None:
        if req.finished:
            return
        req.state, req.finish_reason = FINISHED, reason
        req.finished_at = time.perf_counter()
        event = TokenEvent(req.request_id, [], [], True, reason, req.error)
        if events is not None:
            events.append(event)
        self._deliver(req, event)
        req.done.set()

    def _deliver(self, req: Request, event: TokenEvent) -> None:
        if req.callback is None:
            return
        try:
            req.callback(event)
        except Exception:  # a broken consumer must not take the engine down
            logger.exception("callback of request %s failed", req.request_id)

    # ------------------------------------------------------------------ row bookkeeping
    def _release_finished(self) -> None:
        for row in range(self.n_rows - 1, -1, -1):
            req = self.rows[row]
            if req is not None and req.finished:
                self._release_row(row)

    def _release_row(self, row: int) -> None:
        """Free ``row``, keeping decoding rows a prefix and prefilling rows right after."""
        req = self.rows[row]
        self.rows[row] = None
        if req is not None:
            self.requests.pop(req.request_id, None)
        if row < self.n_dec:
            last_dec = self.n_dec - 1
            self._move_row(last_dec, row)
            self.n_dec -= 1
            hole = last_dec
        else:
            hole = row
        last = self.n_rows - 1
        self._move_row(last, hole)
        self.n_rows -= 1

    def _move_row(self, src: int, dst: int) -> None:
        if src == dst:
            return
        req = self.rows[src]
        self.rows[dst], self.rows[src] = req, None
        if req is None:
            return
        req.row = dst
        self.store.move_row(src, dst, min(self.lengths[src] + 1, self.max_len))
        self.lengths[dst] = self.lengths[src]
        self.phase[dst] = self.phase[src]
        self.draft[dst], self.draft[src] = self.draft[src], None
        for t in self._row_tensors:
            t[dst] = t[src]
