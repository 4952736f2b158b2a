"""Answer extraction and equivalence with math-verify (docs/method.md §11), safe under any process.

math-verify already does the hard part (LaTeX/expression extraction, sympy equivalence), so we
only configure it as the paper did (gold: ``expr`` or ``$``-wrapped ``latex``; output: LaTeX
with boxed priority, then plain expressions, first match). One deliberate difference: the
reference turned math-verify's malformed-operator fix off, which grades ``\\boxed{\\frac43}``
wrong even against the gold ``\\frac43`` (8 of MATH500's 500 gold answers fail against
themselves). Profile ``default`` turns the fix on; profile ``paper`` reproduces D.6 exactly.

What we add is isolation: math-verify's own time limit is a
``SIGALRM`` that only works on a process's main thread, and a pathological answer (a power tower
such as ``9^{9^{9^9}}``, a 10^5-digit number) can sit inside C code that no signal interrupts.
:class:`Grader` therefore runs math-verify in a small child process and enforces a wall-clock
limit per sample from the outside: when the child does not answer in time it is killed and
restarted, and the sample is recorded as ungradable (``status="timeout"``) instead of hanging or
crashing the run. Inside the child the signal-based limits still apply (it is a main thread), so
most slow cases end gracefully without a restart.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tah.errors import ConfigError

# Statuses: ok = an answer was extracted and compared; no_answer = nothing to extract;
# timeout = the per-sample limit was hit; error = math-verify failed on this text;
# bad_gold = the gold answer itself does not parse (a data problem, reported in the summary).
STATUSES = ("ok", "no_answer", "timeout", "error", "bad_gold")
# default = D.6 plus math-verify's fix for malformed operators (\frac43); paper = D.6 exactly.
PROFILES = ("default", "paper")
MAX_OUTPUT_CHARS = 32_000  # answers sit at the end; keep the tail of runaway outputs
_EXTRACTED_MAX_CHARS = 500


@dataclass
class Grade:
    """The verdict on one output."""

    correct: bool
    extracted: str | None
    status: str
    time_s: float

    @property
    def has_answer(self) -> bool:
        return self.extracted is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prediction_config(profile: str) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig
    from math_verify.parser import NormalizationConfig

    latex = LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            basic_latex=True,
            units=True,
            # "paper" turns the fix of `\frac43`, `\sqrt2` off, as the reference evaluator did;
            # it then marks 8 of MATH500's own gold answers wrong against themselves.
            malformed_operators=profile != "paper",
            nits=False,
            boxed="all",
            equations=False,
        ),
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    )
    return [latex, ExprExtractionConfig()]


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, answer_type: str, timeout_s: int | None) -> tuple[Any, ...]:
    from math_verify import (
        ExprExtractionConfig,
        LatexExtractionConfig,
        StringExtractionConfig,
        parse,
    )

    if answer_type == "expr":
        return tuple(parse(gold, [ExprExtractionConfig()], parsing_timeout=timeout_s))
    if answer_type == "latex":
        stripped = gold.strip()
        delimited = (
            len(stripped) > 1 and stripped[0] == stripped[-1] == "$"
        ) or stripped.startswith(("\\(", "\\["))
        text = gold if delimited or "\\boxed" in gold else f"${gold}$"
        return tuple(parse(text, [LatexExtractionConfig()], parsing_timeout=timeout_s))
    if answer_type == "string":
        return tuple(parse(gold, [StringExtractionConfig()], parsing_timeout=timeout_s))
    raise ConfigError(f"answer type {answer_type!r} unknown; use expr, latex or string")


def _describe(parsed: list[Any]) -> str:
    # math-verify returns [sympy object, matched string]; the string is what a person reads.
    text = parsed[1] if len(parsed) > 1 and isinstance(parsed[1], str) else str(parsed[0])
    return text[:_EXTRACTED_MAX_CHARS]


def grade_text(
    output: str, gold: str, answer_type: str, timeout_s: int | None = 5, profile: str = "default"
) -> Grade:
    """Grade one output in this process (no isolation; see :class:`Grader` for that).

    ``timeout_s`` is math-verify's own signal-based limit per parse/compare and only works on the
    main thread; pass None elsewhere.
    """
    from math_verify import StringExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    start = time.perf_counter()

    def done(correct: bool, extracted: str | None, status: str) -> Grade:
        return Grade(bool(correct), extracted, status, time.perf_counter() - start)

    if not isinstance(output, str) or not output.strip():
        return done(False, None, "no_answer")
    output = output[-MAX_OUTPUT_CHARS:]
    try:
        gold_parsed = list(_parse_gold(str(gold), answer_type, timeout_s))
    except TimeoutException:
        return done(False, None, "bad_gold")
    if not gold_parsed:
        return done(False, None, "bad_gold")
    config = [StringExtractionConfig()] if answer_type == "string" else _prediction_config(profile)
    mode = "any_match" if answer_type == "string" else "first_match"
    try:
        pred = parse(
            output, config, extraction_mode=mode, parsing_timeout=timeout_s, raise_on_error=True
        )
    except TimeoutException:
        return done(False, None, "timeout")
    except Exception:  # math-verify failed on this text: ungradable, never fatal
        return done(False, None, "error")
    if not pred:
        return done(False, None, "no_answer")
    extracted = _describe(pred)
    try:
        correct = verify(gold_parsed, pred, timeout_seconds=timeout_s, raise_on_error=True)
    except TimeoutException:
        return done(False, extracted, "timeout")
    except Exception:
        # One pair failing should not hide another pair that matches: retry leniently.
        try:
            correct = verify(gold_parsed, pred, timeout_seconds=timeout_s, raise_on_error=False)
        except TimeoutException:
            return done(False, extracted, "timeout")
    return done(correct, extracted, "ok")


def _child_main() -> None:
    """Serve JSON-line grading requests on stdin until EOF (``python -m tah.evaluation.grading``)."""
    import json
    import sys

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    inner = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    profile = sys.argv[2] if len(sys.argv) > 2 else "default"
    for line in sys.stdin:
        try:
            output, gold, answer_type = json.loads(line)
            grade = grade_text(output, gold, answer_type, inner, profile)
        except BaseException:  # report, keep serving
            grade = Grade(False, None, "error", 0.0)
        sys.stdout.write(json.dumps(grade.to_dict()) + "\n")
        sys.stdout.flush()


class Grader:
    """Grades outputs against gold answers with a hard per-sample time limit.

    With ``isolate=True`` (the default) math-verify runs in a child Python process started with
    ``subprocess`` (``python -m tah.evaluation.grading``: no re-import of the caller's main
    module, so it works from workers, threads, notebooks and stdin scripts) and talks JSON lines
    over pipes. A sample that takes longer than ``time_limit_s`` kills the child, is recorded as
    ``timeout``, and the next sample starts a fresh child. ``isolate=False`` grades in-process
    with math-verify's signal timeouts (main thread only).
    """

    def __init__(
        self, time_limit_s: float = 10.0, isolate: bool = True, profile: str = "default"
    ) -> None:
        if time_limit_s <= 0:
            raise ConfigError(f"grading time limit must be positive, got {time_limit_s}")
        if profile not in PROFILES:
            raise ConfigError(f"grading profile {profile!r} unknown; use one of {PROFILES}")
        self.profile = profile
        self.time_limit_s = float(time_limit_s)
        self.isolate = isolate
        # Inner (signal) limit per parse/compare: a third of the budget, at least 1 s.
        self._inner = max(1, int(self.time_limit_s // 3))
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self.restarts = 0

    # -------------------------------------------------------------- child management
    def _start(self) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # make `tah` importable in the child
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tah.evaluation.grading", str(self._inner), self.profile],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._buffer = b""

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(Exception):
                    stream.close()

    def close(self) -> None:
        """Stop the child process (idempotent)."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
                proc.wait(timeout=2)
        self._kill()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._kill()

    def _read_line(self, deadline: float) -> bytes | None:
        """One reply line, or None when the deadline passes or the child dies."""
        proc = self._proc
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    # -------------------------------------------------------------- grading
    def grade(self, output: str, gold: str, answer_type: str) -> Grade:
        """Grade one output; never raises for bad model text, never blocks past the limit."""
        if not isinstance(output, str) or not output.strip():
            return Grade(False, None, "no_answer", 0.0)
        if answer_type not in ("expr", "latex", "string"):
            raise ConfigError(f"answer type {answer_type!r} unknown; use expr, latex or string")
        if not self.isolate:
            on_main = threading.current_thread() is threading.main_thread()
            return grade_text(
                output, gold, answer_type, self._inner if on_main else None, self.profile
            )
        start = time.monotonic()
        request = (json.dumps([output[-MAX_OUTPUT_CHARS:], str(gold), answer_type]) + "\n").encode()
        for attempt in range(2):
            budget = self.time_limit_s
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._start()
                budget += 60.0  # the first request also pays for python + math-verify import
            try:
                self._proc.stdin.write(request)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill()
                self.restarts += 1
                continue
            line = self._read_line(time.monotonic() + budget)
            if line is not None:
                try:
                    return Grade(**json.loads(line))
                except (ValueError, TypeError):
                    return Grade(False, None, "error", time.monotonic() - start)
            died = self._proc.poll() is not None
            self._kill()
            self.restarts += 1
            if died and attempt == 0:
                continue  # crashed (e.g. out of memory): one fresh try
            return Grade(False, None, "error" if died else "timeout", time.monotonic() - start)
        return Grade(False, None, "error", time.monotonic() - start)


if __name__ == "__main__":
    _child_main()
