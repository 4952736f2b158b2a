"""One prepared GPU run: versions, CUDA correctness, decode throughput, CUDA graphs, compile.

    python bench/device_run.py OUT_DIR [--device cuda] [--quick] [--budget-s 450]
    bash bench/device_run.sh OUT_DIR            # the same, on the device machine

Writes ``OUT_DIR/device_run.json`` (every number) and ``OUT_DIR/summary.md`` (short tables) and
prints the summary. Sections run in order, each inside the time budget (a section that would
start with too little time left is skipped and says so); a section that fails records its
error and the run goes on. ``--device cpu --quick`` runs everything at tiny sizes in well under
two minutes (the test suite runs it, so the script cannot rot).

Sections:

1. ``env``: Python, torch, CUDA device, transformers / peft / accelerate versions.
2. ``correct_fp32``: engine vs ``TaHForCausalLM.generate`` greedy tokens and per-token
   iteration counts (MLP decider, about half the tokens iterating), eager and padded/CUDA-graph
   decode steps; must be identical.
3. ``correct_bf16``: the TaH forward with bf16 weights vs fp32 on the same tokens: depth-1
   logits within ``LOGIT_TOL`` (max abs difference over the fp32 logits' max abs value), the
   logits with 30 % of tokens iterating within ``DEEP_MEAN_TOL`` on average (max reported),
   and decider decisions agreeing except where the fp32 continue-probability is within
   ``TAU_MARGIN`` of tau.
4. ``train_bf16`` (``device_bf16.py``): stage-1 steps (LoRA + base, label routing, 6 %, 30 %
   and all tokens deep) and a stage-2 step (decider BCE) of the trained bundled model under
   bf16 autocast (as ``mixed_precision: bf16`` trains) vs fp32. Stage 1 is judged against the
   plain model's own bf16 gradient error on the same batch: TaH's error over the plain one
   may exceed the same ratio one precision up (fp32 vs fp64: the function's own conditioning)
   by ``AMPLIFICATION_TOL``; stage 2: gradients within ``GRAD_TOL``.
5. ``throughput``: random-weight Qwen3-1.7B-shaped model (``--quick``: a tiny one), bf16 on CUDA:
   plain engine, TaH engine (~6 % iterating, calibrated), ``TaHForCausalLM.generate``, HF
   ``generate`` at batch 1, 16, 64: tokens/s, ratios, achieved memory bandwidth (weights + KV
   bytes read per step / step time) against ``PEAK_BW``.
6. ``graphs``: the TaH and plain engines with decode steps as CUDA graphs vs eager: tokens/s.
7. ``compile``: the TaH engine with ``torch.compile`` modes vs eager at batch 16.
8. ``eval_engine``: ``tah eval``'s generation on the engine vs the core generate at batch 16
   (``eval_engine.py``): the bundled model on 256 word problems (answers must be identical),
   a SmolLM2-135M-shaped plain model: tokens/s and the ratio.
9. ``speculation``: speculative depth 1 on vs off (the engine keyword
   ``SPECULATION_SWITCH``): identical greedy tokens, steps, extra steps per iterating token,
   drafts accepted, tokens/s; "not available" when the engine has no such switch.

The exit status is 1 when a section's checks fail or a section fails to run.

The sections themselves live in ``device_sections.py``; this script runs them and reports.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from device_sections import (  # noqa: E402 (bench/ is on the path from here)
    DEEP_MEAN_TOL,
    LOGIT_TOL,
    MIN_SECONDS,
    PEAK_BW,
    RUNNERS,
    SECTIONS,
    TAU_MARGIN,
    Run,
    env,
)


# ---------------------------------------------------------------------------- report
def summary(results: dict) -> str:
    s = results["sections"]
    lines = [f"# tah device run ({results.get('date', '')})", ""]
    e = s.get("env", {})
    lines.append(
        f"torch {e.get('torch')}, transformers {e.get('transformers')}, peft {e.get('peft')}, "
        f"accelerate {e.get('accelerate')}; device {results['config']['device']}"
        + (f" ({e['gpu']}, CUDA {e.get('cuda')})" if e.get("gpu") else "")
        + (" (--quick)" if results["config"]["quick"] else "")
    )
    lines += ["", "| section | status | seconds | note |", "|---|---|---|---|"]
    for name in SECTIONS:
        r = s.get(name, {})
        status = r.get("status", "not run")
        note = r.get("error") or r.get("reason") or ""
        if "ok" in r:
            status += " (checks pass)" if r["ok"] else " (CHECKS FAIL)"
        lines.append(f"| {name} | {status} | {r.get('seconds', 0):.1f} | {note[:120]} |")
    c = s.get("correct_fp32", {})
    if "eager_identical" in c:
        lines += ["", f"fp32 engine vs core generate: eager identical {c['eager_identical']}, "
                  f"padded/graph steps identical {c['graphs_identical']} "
                  f"({c['iter_share']:.0%} of tokens iterate)"]  # fmt: skip
    c = s.get("correct_bf16", {})
    if "logit_rel_err" in c:
        lines.append(
            f"bf16 vs fp32: depth-1 logits max rel. error {c['logit_rel_err']:.4f} (tol "
            f"{LOGIT_TOL}); with iterating tokens mean {c['deep_logit_mean_err']:.4f} (tol "
            f"{DEEP_MEAN_TOL}), max {c['deep_logit_max_err']:.3f}; "
            f"decisions differing {c['decisions_differ']}/{c['decisions']}, outside the "
            f"±{TAU_MARGIN} margin of tau: {c['decisions_differ_outside_margin']}"
        )
    lines += _train_lines(s.get("train_bf16", {}))
    t = s.get("throughput", {})
    if t.get("rows"):
        lines += [
            "",
            f"decode tokens/s, {t['model']} ({t['parameters'] / 1e9:.2f} B parameters, "
            f"{t['dtype']}), prompt {t['prompt_len']}, {t['new_tokens']} new tokens:",
            "",
            "| batch | engine | TaH engine | core generate | HF generate | TaH/engine | "
            "TaH/core | engine/HF | iterating | BW engine | BW TaH |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in t["rows"]:
            lines.append(
                f"| {r['batch']} | {r['engine_tok_s']:.0f} | {r['engine_tah_tok_s']:.0f} | "
                f"{r['core_tok_s']:.0f} | {r['hf_tok_s']:.0f} | {r['tah_vs_engine']:.2f} | "
                f"{r['tah_vs_core']:.2f} | {r['engine_vs_hf']:.2f} | {r['iter_share']:.1%} | "
                f"{r['engine_bw_frac']:.0%} | {r['engine_tah_bw_frac']:.0%} |"
            )
        lines.append(f"(BW: achieved bytes/s over {PEAK_BW / 1e12:.1f} TB/s)")
    g = s.get("graphs", {})
    if g.get("rows"):
        kind = "CUDA graphs" if g["cuda_graphs"] else "padded eager (no CUDA)"
        lines += ["", f"decode steps as {kind} vs eager:", "",
                  "| engine | batch | eager | graphs | gain |", "|---|---|---|---|---|"]  # fmt: skip
        for r in g["rows"]:
            lines.append(
                f"| {r['engine']} | {r['batch']} | {r['eager_tok_s']:.0f} | "
                f"{r['graphs_tok_s']:.0f} | {r['gain']:.2f} |"
            )
    c = s.get("compile", {})
    if c.get("rows"):
        lines += ["", f"torch.compile, TaH engine, batch {c['batch']} "
                  f"(eager {c['eager_tok_s']:.0f} tok/s):", ""]  # fmt: skip
        for r in c["rows"]:
            if "skipped" in r:
                lines.append(f"- {r['mode']}: skipped ({r['skipped']})")
            else:
                lines.append(
                    f"- {r['mode']}: {r['tok_s']:.0f} tok/s ({r['vs_eager']:.2f}x eager), "
                    f"compile + first run {r['compile_s']:.0f} s"
                )
    lines += _eval_lines(s.get("eval_engine", {})) + _speculation_lines(s.get("speculation", {}))
    return "\n".join(lines) + "\n"


def _train_lines(c: dict) -> list[str]:
    if "stage1" not in c:
        return []
    p = c["stage1"]["plain"]
    lines = [
        f"stage 1 bf16 gradient rel. error, {c['model']}: plain model {p['bf16_grad_err']:.4f} "
        f"(fp32 vs fp64 {p['fp32_grad_err']:.1e})"
    ]
    for share, t in c["stage1"]["tah"].items():
        lines.append(
            f"- TaH, {float(share):.0%} of tokens deep: {t['bf16_grad_err']:.4f} = "
            f"{t['amplification_bf16']:.1f}x plain (fp32 vs fp64: {t['amplification_fp32']:.1f}x; "
            f"tol {c['amplification_tol']}x that), loss rel. error {t['loss_rel_err']:.5f}"
        )
    t = c["stage2"]
    lines.append(
        f"stage 2 bf16 vs fp32: loss rel. error {t['loss_rel_err']:.4f}, decider gradient rel. "
        f"error {t['grad_rel_err']:.4f} (tol {c['grad_tol']})"
    )
    return lines


def _eval_lines(c: dict) -> list[str]:
    if not c.get("rows"):
        return []
    lines = ["", f"tah eval generation, engine vs core generate, batch {c['batch']}, greedy:", "",
             "| model | dtype | problems | engine tok/s | core tok/s | engine/core | identical |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in c["rows"]:
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['problems']} | {r['engine_tok_s_wall']:.0f} | "
            f"{r['core_tok_s_wall']:.0f} | {r['ratio_wall']:.2f} | {r['identical']} |"
        )
    return lines


def _speculation_lines(c: dict) -> list[str]:
    if not c.get("rows"):
        return []
    lines = ["", f"speculative depth 1 ({c['switch']}) on vs off, TaH engine, greedy:", "",
             "| batch | tok/s off | tok/s on | speed-up | extra steps / iterating token off | "
             "on | drafts | accepted | identical |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in c["rows"]:
        lines.append(
            f"| {r['batch']} | {r['off_tok_s']:.0f} | {r['on_tok_s']:.0f} | {r['speedup']:.2f} | "
            f"{r['off_extra_steps_per_iterating']:.2f} | {r['on_extra_steps_per_iterating']:.2f} | "
            f"{r['drafts']} | {r['accepted']} | {r['identical']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for device_run.json and summary.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU check)")
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="stop starting sections after"
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[])
    args = parser.parse_args(argv)
    from tah.io import atomic_file, write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    run.results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if run.cuda and not torch.cuda.is_available():
        run.results["sections"]["env"] = {**env(run), "status": "ok"}
        for name in SECTIONS[1:]:
            run.results["sections"][name] = {"status": "skipped", "reason": "no CUDA device"}
    else:
        torch.set_flush_denormal(True)
        for name in args.only:
            if name in args.skip:
                run.results["sections"][name] = {"status": "skipped", "reason": "--skip"}
                continue
            need = 0 if run.quick else MIN_SECONDS.get(name, 10)
            if run.left() < need:
                reason = f"time budget: {run.left():.0f} s left, needs ~{need} s"
                run.results["sections"][name] = {"status": "skipped", "reason": reason}
                continue
            t = time.perf_counter()
            try:
                result = RUNNERS[name](run)
                result.setdefault("status", "ok")  # or what the section says ("not available")
            except Exception as exc:  # record and go on: one broken section must not cost the rest
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
            result["seconds"] = time.perf_counter() - t
            run.results["sections"][name] = result
            print(
                f"[device_run] {name}: {result['status']} ({result['seconds']:.1f} s)", flush=True
            )
            # partial results survive a kill (the shell wrapper's timeout, a lost machine)
            write_json(out / "device_run.json", run.results)
            with atomic_file(out / "summary.md") as f:
                f.write(summary(run.results))
    text = summary(run.results)
    write_json(out / "device_run.json", run.results)
    with atomic_file(out / "summary.md") as f:
        f.write(text)
    print(text)
    failed = [
        n
        for n, r in run.results["sections"].items()
        if r.get("ok") is False or r.get("status") == "failed"
    ]
    if failed:
        print(f"[device_run] FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
