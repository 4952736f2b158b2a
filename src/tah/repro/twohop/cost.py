"""What each arm of ``tah repro twohop`` costs per token: forward passes and matmul FLOPs.

Why our own count rather than a FLOP counter (``torch.utils.flop_counter``): a counter measures
one traced forward, but a TaH token's cost depends on its routing. So the count here is per
token, from the modules' shapes, and the measured share of tokens at depth 2 weights the second
pass. Counted: every ``nn.Linear`` (2 x in x out FLOPs per token): the layers' q, k, v, o
projections and MLP, once per pass; the LM head, once per pass (logits add up across passes);
on a depth-2 pass also the LoRA matmuls and the soft embedding (probabilities x embedding rows,
2 x vocab x hidden); TaH+'s decider once per token. Not counted: attention's score and value
products, which grow with the context (:func:`attention_context_flops` gives their size at the
test rows' mean context so the report can say how much is left out), norms and activations.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tah.repro.twohop.config import TwoHopConfig

#: How the FLOPs are counted, written into results.json beside the numbers.
COUNTED = (
    "forward matmul FLOPs per token from the modules' shapes (2 x in x out per nn.Linear): the "
    "layers' q/k/v/o projections and MLP and the LM head once per pass; on a depth-2 pass also "
    "LoRA and the soft embedding (2 x vocab x hidden); TaH+'s decider once per token; a pass "
    "is weighted by the arm's mean share of test tokens at depth 2. Attention score/value "
    "products (context-dependent) not counted: attention_context_flops_not_counted gives them "
    "at the test rows' mean context, depth-1 keys only."
)

# Arms with 2 passes on a share of tokens (the rest run one pass of the base's depth)
_TAH_ARMS = ("tahplus", "alwaysthink")


def linear_flops(model: nn.Module) -> dict[str, int]:
    """Matmul FLOPs per token of every ``nn.Linear``, grouped: ``layers`` (the transformer's
    projections and MLP), ``head``, ``lora`` and ``decider``."""
    groups = {"layers": 0, "head": 0, "lora": 0, "decider": 0}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        flops = 2 * module.in_features * module.out_features
        if name.startswith("decider."):
            groups["decider"] += flops
        elif ".lora_" in name:
            groups["lora"] += flops
        elif name.endswith("lm_head"):
            groups["head"] += flops
        else:
            groups["layers"] += flops
    return groups


def attention_context_flops(config: TwoHopConfig, layers: int) -> float:
    """Attention's score and value products per token and pass, not counted elsewhere: 2 x 2 x
    heads x head_dim x keys per layer, at the mean number of keys of a test row's token."""
    keys = (config.task_spec.length + 1) / 2
    return 4.0 * config.hidden * keys * layers  # heads x head_dim = hidden


def arm_costs(config: TwoHopConfig, shares: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per arm: forward passes per token and forward FLOPs per token, given each arm's share of
    tokens at depth 2 (``shares``, 0 to 1; an arm missing there is left out). ``_bare`` arms
    cost what their mixed-format arm costs."""
    from tah.repro.twohop.jobs import untrained, wide_intermediate

    shallow, deep = config.shallow_layers, config.deep_layers
    widths = {"standard": None, "wide": wide_intermediate(config), "deep": None}
    flops_of = {
        arm: linear_flops(untrained(config, deep if arm == "deep" else shallow, width))
        for arm, width in widths.items()
    }
    tah = linear_flops(untrained(config, shallow, tahplus=True))
    soft_embedding = 2 * config.hidden * untrained(config, 1).config.vocab_size
    out: dict[str, dict[str, Any]] = {}
    for arm, share in shares.items():
        kind = arm.removesuffix("_bare")
        if kind in _TAH_ARMS:
            one_pass = tah["layers"] + tah["head"]
            second = tah["layers"] + tah["head"] + tah["lora"] + soft_embedding
            decider = tah["decider"] if kind == "tahplus" else 0
            flops = one_pass + share * second + decider
            passes, layers = 1.0 + share, shallow
        elif kind in flops_of:
            flops = flops_of[kind]["layers"] + flops_of[kind]["head"]
            passes, layers = 1.0, deep if kind == "deep" else shallow
        else:
            continue
        out[arm] = {
            "share_tokens_depth2": share,
            "passes_per_token": passes,
            "flops_per_token": flops,
            "layer_passes_per_token": layers * passes,
            "attention_context_flops_not_counted": attention_context_flops(config, layers) * passes,
        }
    return out


# ------------------------------------------------------------------ the report's section
_FAIR_ROWS = (
    ("tahplus", "TaH+ (mixed stage 1, bare-row decider)"),
    ("standard", "Standard (mixed rows)"),
    ("standard_bare", "Standard (bare rows)"),
    ("wide", "wide (mixed rows)"),
    ("wide_bare", "wide (bare rows)"),
    ("deep", "deep (mixed rows)"),
    ("deep_bare", "deep (bare rows)"),
    ("alwaysthink", "AlwaysThink (mixed rows)"),
    ("alwaysthink_bare", "AlwaysThink (bare rows)"),
)


def _pm(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def fair_markdown(results: dict[str, Any]) -> list[str]:
    """Every fine-tuned arm's accuracy beside its cost per token and, where the run has the
    format-fair ``_bare`` arms, the paired tests of TaH+ against each. Empty without costs."""
    agg, cost = dict(results.get("aggregate") or {}), (results.get("cost") or {}).get("per_arm", {})
    if not cost:
        return []
    if "deep" not in agg:  # a run collected before deep joined the per-seed rows: from the gate
        agg["deep"] = _deep_from_gate(results)
    fair = any(arm.endswith("_bare") for arm in agg)
    layers = results["config"]["shallow_layers"], results["config"]["deep_layers"]
    base_flops = cost.get("tahplus", {}).get("flops_per_token")
    lines = [
        "## Accuracy and cost side by side" + (" (with the format-fair controls)" if fair else ""),
        "",
        (
            "`_bare`: the same arm fine-tuned from the same base on the same problem stream, "
            "steps and lr, on bare rows only (the format TaH+'s decider trains on); the other "
            "arms train on the written/bare mix. "
            if fair
            else ""
        )
        + f"{layers[0]}-layer models except deep ({layers[1]} layers). "
        "FLOPs: " + (results.get("cost") or {}).get("counted", ""),
        "",
        "| model | two-hop | one-hop | all queries | tokens at depth 2 (%) | forward passes / "
        "token | layer passes / token | forward FLOPs / token | FLOPs vs TaH+ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, label in _FAIR_ROWS:
        if arm not in agg:
            continue
        s, c = agg[arm], cost.get(arm, {})
        if s is None:
            continue
        flops = c.get("flops_per_token")
        ratio = f"{flops / base_flops:.2f}×" if flops and base_flops else "–"
        lines.append(
            f"| {label} | {_pm(s['two_hop'])} | {_pm(s['one_hop'])} | {_pm(s['all_queries'])} | "
            f"{_pm(s['share_tokens_iterating'])} | "
            + (
                f"{c['passes_per_token']:.3f} | {c['layer_passes_per_token']:.2f} | "
                if c
                else "– | – | "
            )
            + (f"{flops / 1e3:,.1f} k | {ratio} |" if flops else "– | – |")
        )
    left_out = cost.get("tahplus", {}).get("attention_context_flops_not_counted")
    if left_out and base_flops:
        lines += [
            "",
            f"Not counted: attention score/value products, about {left_out / 1e3:,.1f} k "
            f"FLOPs per token for TaH+ at the test rows' mean context ({100 * left_out / base_flops:.0f} % of "
            "its counted FLOPs; per arm they grow with its layer passes per token).",
        ]
    if not fair:
        return lines + [""]
    lines += [
        "",
        "Paired exact McNemar, TaH+ against each `_bare` arm on two-hop test queries (TaH+ "
        "right only / the other right only, p):",
        "",
        "| seed | " + " | ".join(arm for arm, _ in _FAIR_ROWS if arm.endswith("_bare")) + " |",
        "|---|" + "---|" * 4,
    ]
    for seed, row in sorted((results.get("per_seed") or {}).items()):
        cells = []
        for arm, _ in _FAIR_ROWS:
            if not arm.endswith("_bare"):
                continue
            t = row.get("mcnemar_two_hop", {}).get(f"tahplus_vs_{arm}")
            p = None if t is None else ("p < 1e-300" if t["p"] == 0 else f"p = {t['p']:.3g}")
            cells.append("–" if t is None else f"{t['only_first']} / {t['only_second']}, {p}")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines + [""]


def _deep_from_gate(results: dict[str, Any]) -> dict[str, Any] | None:
    """Two-hop and one-hop accuracy of the deep control over seeds, from the gate's record."""
    from tah.repro.stats import over_seeds as mean_std

    rows = [row for row in results["gate"]["per_seed"].values() if row["two_hop"].get("deep")]
    if not rows:
        return None
    return {
        "two_hop": mean_std([row["two_hop"]["deep"] for row in rows]),
        "one_hop": mean_std([row["one_hop"]["deep"] for row in rows]),
        "all_queries": None,
        "share_tokens_iterating": mean_std([0.0 for _ in rows]),
    }
