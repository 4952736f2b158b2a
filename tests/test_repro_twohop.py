"""The two-hop study: task generator, the wide control, statistics, and ``--quick`` end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tah.data.twohop import (
    IGNORE,
    KINDS,
    SPECIALS,
    TWO_HOP,
    TwoHopTask,
    build_tokenizer,
    render,
    sample_batch,
    table_pairs,
)
from tah.errors import ConfigError


def _tables(task: TwoHopTask, ids: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """table_pairs as lookups; the queries' answers checked against them are the generator's."""
    f, g = (dict(pairs) for pairs in table_pairs(task, ids))
    assert ids[1] == SPECIALS.index("F") and ids[2 + task.pair_len * task.pairs] == SPECIALS.index(
        "G"
    )
    if task.separators:
        step = task.pair_len
        ends = [
            ids[s + step * i + 2] for s in (2, 3 + step * task.pairs) for i in range(task.pairs)
        ]
        assert set(ends) == {task.separator}
    return f, g


@pytest.mark.parametrize("separators", [False, True])
def test_answers_follow_the_tables_and_sets_are_disjoint(separators):
    task = TwoHopTask(separators=separators)
    batch = sample_batch(task, 64, torch.Generator().manual_seed(3))
    assert batch.input_ids.shape == (64, task.length)
    n, first = task.entities, len(SPECIALS)
    for row in range(64):
        ids = batch.input_ids[row].tolist()
        f, g = _tables(task, ids)
        assert all(first <= x < first + n for x in f)  # keys of F: X
        assert all(first + n <= y < first + 2 * n for y in f.values())  # values of F: Y
        assert set(g) == set(f.values())  # G is keyed by exactly F's values
        assert all(z >= first + 2 * n for z in g.values())  # values of G: Z
        seen: dict[int, set[int]] = {}
        for q in range(task.queries):
            at = task.first_query + task.query_len * q
            op, arg, ans = ids[at : at + 3]
            kind = int(batch.kinds[row, q])
            if kind == 0:
                expected = f[arg]
            elif kind == 1:
                expected = g[arg]
            else:
                expected = g[f[arg]]
            assert SPECIALS[op] == KINDS[kind] and ans == expected == int(batch.answers[row, q])
            assert arg not in seen.setdefault(kind, set())  # no repeated question
            seen[kind].add(arg)
            if kind == TWO_HOP:
                assert int(batch.intermediates[row, q]) == f[arg]
    supervised = batch.labels != IGNORE
    assert supervised.sum(1).eq(task.queries).all()
    assert (batch.labels[supervised] == batch.answers.flatten()).all()
    share = float((batch.kinds == TWO_HOP).float().mean())
    assert 0.2 < share < 0.47


@pytest.mark.parametrize("separators", [False, True])
def test_stream_is_deterministic_and_tokenizer_matches_ids(separators):
    task = TwoHopTask(entities=10, pairs=4, queries=3, separators=separators)
    a = sample_batch(task, 4, torch.Generator().manual_seed(1))
    b = sample_batch(task, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a.input_ids, b.input_ids)
    tokenizer = build_tokenizer(task)
    text = render(task, a.input_ids[0])
    assert tokenizer(text)["input_ids"] == a.input_ids[0].tolist()
    assert len(tokenizer) == task.vocab_size


def test_bad_task_is_refused():
    with pytest.raises(ConfigError, match="pairs"):
        TwoHopTask(entities=4, pairs=8)


def test_written_format_spells_out_the_intermediate_of_the_same_problems():
    compact = TwoHopTask(separators=True)
    written = TwoHopTask(separators=True, written_intermediate=True)
    a = sample_batch(compact, 32, torch.Generator().manual_seed(5))
    b = sample_batch(written, 32, torch.Generator().manual_seed(5))
    slots = compact.answer_positions()
    two = a.kinds == TWO_HOP
    assert torch.equal(a.kinds, b.kinds) and two.any() and (~two).any()
    # Tables and queries are the same problems; only two-hop queries change, and keep their places.
    rest = torch.ones_like(a.input_ids, dtype=torch.bool)
    rest[:, slots] = rest[:, slots + 1] = False
    assert torch.equal(a.input_ids[rest], b.input_ids[rest])
    assert torch.equal(b.input_ids[:, slots][two], a.intermediates[two])  # gf x F(x) ...
    assert torch.equal(b.input_ids[:, slots + 1][two], a.answers[two])  # ... G(F(x))
    assert torch.equal(b.input_ids[:, slots][~two], a.input_ids[:, slots][~two])
    assert (b.input_ids[:, slots + 1][~two] == written.separator).all()
    # Both steps are supervised on a written two-hop query; one-hop queries are unchanged.
    assert torch.equal(b.labels[:, slots], b.input_ids[:, slots])
    assert torch.equal(b.labels[:, slots + 1] != IGNORE, two)
    assert int((b.labels != IGNORE).sum()) == int((a.labels != IGNORE).sum() + two.sum())
    with pytest.raises(ConfigError, match="separators"):
        TwoHopTask(written_intermediate=True)


def test_written_second_step_accuracy_against_a_brute_force_count():
    from tah.repro.twohop.runs import written_second_step_accuracy

    task = TwoHopTask(entities=10, pairs=4, queries=6, separators=True, written_intermediate=True)
    batches = [sample_batch(task, 16, torch.Generator().manual_seed(s)) for s in (1, 2)]
    rng = random.Random(0)
    noisy: list[torch.Tensor] = []  # next-token guesses, right at random about half the time

    def forward(batch):  # logits whose argmax at position t is a guess at token t + 1
        nxt = torch.roll(batch.input_ids, -1, dims=1)
        guess = nxt.clone()
        for row in range(guess.shape[0]):
            for col in range(guess.shape[1]):
                if rng.random() < 0.5:
                    guess[row, col] = rng.randrange(task.vocab_size)
        noisy.append(guess)
        return torch.nn.functional.one_hot(guess, task.vocab_size).float(), None

    measured = written_second_step_accuracy(forward, task, batches)
    slots = task.answer_positions()
    right = count = 0
    for batch, guess in zip(batches, noisy, strict=True):
        for row in range(batch.input_ids.shape[0]):
            for q, slot in enumerate(slots.tolist()):
                if int(batch.kinds[row, q]) == TWO_HOP:
                    count += 1
                    right += int(guess[row, slot] == batch.input_ids[row, slot + 1])
    assert 0.3 < measured < 0.8 and measured == pytest.approx(right / count)
    with pytest.raises(ValueError, match="written_intermediate"):
        written_second_step_accuracy(forward, TwoHopTask(), batches)


def test_decider_reads_the_named_layers():
    from tah.repro.twohop.runs import decider_layers
    from tah.repro.twohop.study import preset

    assert decider_layers(4) == [2, 4] and decider_layers(4, "all") == [1, 2, 3, 4]
    assert decider_layers(1) == [1]
    with pytest.raises(ConfigError, match="decider_reads"):
        preset("quick").with_overrides(["decider_reads=first"])


def test_written_base_settings_are_checked():
    from tah.repro.twohop.study import preset

    with pytest.raises(ConfigError, match="separators"):
        preset("quick").with_overrides(["task.separators=false"])
    with pytest.raises(ConfigError, match="base_writes_intermediate"):
        preset("quick").with_overrides(["task.separators=true", "task.written_intermediate=true"])
    config = preset("quick")
    assert config.base_task_spec.written_intermediate and not config.task_spec.written_intermediate
    # A bare-answer base has no written-out format to mix into fine-tuning batches.
    with pytest.raises(ConfigError, match="finetune_written_share needs"):
        config.with_overrides(["base_writes_intermediate=false"])
    bare = config.with_overrides(
        ["base_writes_intermediate=false", "finetune_written_share=0", "decider_written_share=0"]
    )
    assert not bare.base_task_spec.written_intermediate
    with pytest.raises(ConfigError, match="decider_written_share needs"):
        bare.with_overrides(["decider_written_share=0.5"])
    with pytest.raises(ConfigError, match="decider_written_share must be"):
        config.with_overrides(["decider_written_share=1.0"])
    # None: the decider trains on the fine-tuning mix
    same = config.with_overrides(["decider_written_share=null"])
    assert same.decider_written_per_batch == same.written_per_batch > 0
    assert config.decider_written_per_batch == 0


def test_widen_keeps_the_function_and_adds_parameters():
    from tah.repro.twohop.runs import Shape, count_parameters, new_standard
    from tah.repro.widen import widen

    task = TwoHopTask(entities=8, pairs=4, queries=3)
    base = new_standard(task, Shape(layers=2, hidden=32, intermediate=64), 0).eval()
    wide = widen(base, 96, seed=1).eval()
    ids = sample_batch(task, 3, torch.Generator().manual_seed(0)).input_ids
    torch.testing.assert_close(wide(input_ids=ids).logits, base(input_ids=ids).logits)
    assert count_parameters(wide) > count_parameters(base)


def test_mcnemar_matches_the_binomial_by_hand():
    from tah.repro.twohop.results import mcnemar

    a = [True] * 8 + [False] * 2 + [True] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5
    out = mcnemar(a, b)
    assert (out["only_first"], out["only_second"]) == (8, 2)
    # P(X <= 2) for X ~ Bin(10, 1/2) = 56/1024, doubled
    assert out["p"] == pytest.approx(2 * 56 / 1024)
    assert mcnemar(a, a)["p"] == 1.0
    # a p below float range is printed as a bound, not as "p = 0"
    from tah.repro.twohop.report import _p_text

    assert mcnemar([True] * 1872, [False] * 1872)["p"] == 0.0
    assert _p_text(0.0) == "p < 1e-300" and _p_text(0.0123) == "p = 0.0123"


def test_auc_against_pairwise_count():
    from tah.repro.twohop.jobs import auc

    rng = random.Random(0)
    scores = torch.tensor([rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(60)])
    positive = torch.tensor([rng.random() < 0.3 for _ in range(60)])
    pos, neg = scores[positive].tolist(), scores[~positive].tolist()
    pairs = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    assert auc(scores, positive) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_gate_rules():
    from tah.repro.twohop.study import check_gate

    def run(gf: float, one_hop: float = 1.0) -> dict:
        return {"test": {"accuracy": {"gf": gf, "one_hop": one_hop}}}

    ok = {
        "shallow": run(0.14),
        "base": run(0.15),
        "standard": run(0.17),
        "standard2x": run(0.19),
        "wide": run(0.16),
        "deep": run(0.9),
    }
    assert check_gate({0: ok, 1: ok})["passed"]
    not_at_plateau = {**ok, "standard2x": run(0.3)}
    verdict = check_gate({0: ok, 1: not_at_plateau})
    assert not verdict["passed"]
    assert verdict["per_seed"][1]["checks"]["standard_near_plateau"] is False
    wide_helps = {**ok, "wide": run(0.4)}
    assert not check_gate({0: wide_helps})["passed"]
    depth_no_help = {**ok, "deep": run(0.3)}
    verdict = check_gate({0: depth_no_help})
    assert not verdict["passed"]
    assert verdict["per_seed"][0]["checks"]["deep_beats_standard"] is False
    base_at_chance = {"shallow": run(0.12, 0.12), "base": run(0.12, one_hop=0.5)}  # no arms
    verdict = check_gate({0: base_at_chance})
    assert not verdict["passed"]
    assert verdict["per_seed"][0]["checks"]["base_does_one_hop"] is False
    assert verdict["per_seed"][0]["checks"]["wide_no_better"] is None


@pytest.mark.parametrize("tied", [False, True])
def test_deepen_keeps_the_function_and_doubles_the_depth(tied):
    from tah.repro.twohop.runs import Shape, deepen, new_standard

    task = TwoHopTask(entities=8, pairs=4, queries=3)
    shape = Shape(layers=2, hidden=32, intermediate=64, tie_embeddings=tied)
    base = new_standard(task, shape, 0).eval()
    deep = deepen(base, 4, seed=1).eval()
    assert deep.config.num_hidden_layers == 4
    tied_now = deep.lm_head.weight.data_ptr() == deep.model.embed_tokens.weight.data_ptr()
    assert tied_now == tied
    ids = sample_batch(task, 3, torch.Generator().manual_seed(5)).input_ids
    with torch.no_grad():
        torch.testing.assert_close(deep(input_ids=ids).logits, base(input_ids=ids).logits)
    # the new layers are copies of the base's (only their output projections start at zero)
    new_layer, old_layer = deep.model.layers[2], base.model.layers[0]
    assert torch.equal(new_layer.self_attn.q_proj.weight, old_layer.self_attn.q_proj.weight)
    assert not new_layer.mlp.down_proj.weight.any()
    # ...and they train: one step moves the output away from the base's
    deep.train()
    loss = deep(input_ids=ids, labels=ids).loss
    loss.backward()
    assert new_layer.self_attn.o_proj.weight.grad.abs().sum() > 0


def test_quick_study_end_to_end_and_resume(tmp_path):
    from tah.repro.twohop.config import BARE_JOBS
    from tah.repro.twohop.study import preset, run_study

    config = preset("quick")
    results = run_study(config, tmp_path, show_progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["gate"]["recorded_at"] <= saved["readout"]["registered_at"]
    assert set(saved["gate"]["per_seed"]["0"]["two_hop"]) == {
        "shallow",
        "base",
        "standard",
        "standard2x",
        "wide",
        "deep",
    }
    # The quick base never reaches the precondition, so it trains every extra round allowed.
    rounds = saved["gate_runs"]["0"]["base"]["rounds"]
    assert [r["round"] for r in rounds] == list(range(config.base_max_rounds + 1))
    assert saved["gate_runs"]["0"]["base"]["steps"] == (
        config.base_steps + config.base_max_rounds * config.base_round_steps
    )
    assert saved["gate_runs"]["0"]["deep"]["layers"] == config.deep_layers
    # The default base learns two-hop queries written out; every arm is tested on the bare answer.
    for job in ("shallow", "base"):
        assert 0.0 <= saved["gate_runs"]["0"][job]["written_second_step"] <= 1.0
    curve = saved["gate_runs"]["0"]["shallow"]["validation_curve"]
    assert all("written_second_step" in point for point in curve)
    assert "written_second_step" not in saved["gate_runs"]["0"]["deep"]
    row = saved["per_seed"]["0"]
    for arm in ("standard", "wide", "alwaysthink", "tahplus", "oracle", "depth1"):
        assert 0.0 <= row[arm]["accuracy"]["gf"] <= 1.0
    assert row["alwaysthink"]["share_tokens_iterating"] == 1.0
    assert row["depth1"]["share_tokens_iterating"] == 0.0
    assert row["wide"]["parameters"] >= row["tahplus"]["parameters"]
    assert set(row["mcnemar_two_hop"]) == {
        "tahplus_vs_standard",
        "tahplus_vs_wide",
        "tahplus_vs_alwaysthink",
        *(f"tahplus_vs_{arm}" for arm in BARE_JOBS),
    }
    # the format-fair controls (issue 23): bare rows only, the mixed arm's shape
    for arm in BARE_JOBS:
        assert 0.0 <= row[arm]["accuracy"]["gf"] <= 1.0
        assert saved["aggregate"][arm]["two_hop"]["n"] == 1
    assert row["alwaysthink_bare"]["share_tokens_iterating"] == 1.0
    assert row["wide_bare"]["parameters"] == row["wide"]["parameters"]
    assert row["deep_bare"]["parameters"] == saved["gate_runs"]["0"]["deep"]["parameters"]
    cost = saved["cost"]["per_arm"]
    assert cost["alwaysthink_bare"]["passes_per_token"] == 2.0
    assert cost["deep"]["flops_per_token"] == cost["deep_bare"]["flops_per_token"]
    assert cost["standard"]["flops_per_token"] < cost["tahplus"]["flops_per_token"]
    assert "(with the format-fair controls)" in (tmp_path / "results.md").read_text()
    assert {"precision", "recall", "auc"} <= set(row["decider"]["test"]["answers"])
    split = row["two_hop_by_base_outcome"]
    assert (
        split["base_wrong"]["queries"] + split["base_right"]["queries"]
        == (row["tahplus"]["queries"]["gf"])
    )
    # oracle routing leaves the base's right answers at depth 1: there it equals depth 1 alone
    if split["base_right"]["queries"]:
        assert split["base_right"]["oracle"] == split["base_right"]["depth1"]
    assert results["complete"]
    assert (tmp_path / "results.md").read_text().count("| seed |") >= 3
    assert (tmp_path / "results.png").stat().st_size > 0
    # TaH arms trained past a failed gate are labelled; a stopped study has nothing to label.
    from tah.repro.twohop.report import markdown

    assert not saved["gate"]["passed"] and "exploratory" in markdown(saved)
    kept = ("standard", "mcnemar_two_hop")
    stopped = {**saved, "per_seed": {"0": {k: v for k, v in row.items() if k in kept}}}
    assert "exploratory" not in markdown(stopped)
    # Rerunning skips every finished job: no result file is rewritten.
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.glob("seed0/*/result.json")}
    assert len(stamp) == 8 + len(BARE_JOBS)
    run_study(config, tmp_path, show_progress=False)
    assert stamp == {p: p.stat().st_mtime_ns for p in tmp_path.glob("seed0/*/result.json")}
    # The same verdict over the same jobs keeps the time it was first recorded.
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["gate"] == saved["gate"] and again["gate_history"] == saved["gate_history"]
    # ...and refuses to mix runs made with other settings into the same folder.
    with pytest.raises(ConfigError, match="other settings"):
        run_study(config.with_overrides(["base_steps=13"]), tmp_path, show_progress=False)


def test_hard_labels_mark_exactly_the_labellers_wrong_answers():
    from tah.repro.twohop.runs import Shape, hard_labels, new_standard

    task = TwoHopTask(entities=8, pairs=4, queries=3)
    model = new_standard(task, Shape(layers=1, hidden=32, intermediate=64), 0).eval()
    batch = sample_batch(task, 5, torch.Generator().manual_seed(2))
    iters = hard_labels(model, batch)
    where = task.answer_positions() - 1
    with torch.no_grad():
        guess = model(input_ids=batch.input_ids).logits[:, where].argmax(-1)
    assert torch.equal(iters[:, where] == 2, guess != batch.answers)
    others = torch.ones(task.length, dtype=torch.bool)
    others[where] = False
    assert (iters[:, others] == 1).all()


def test_routing_modes_of_a_tah_model():
    from tah.repro.twohop.runs import (
        Shape,
        eval_batches,
        new_standard,
        new_tah,
        predict,
        tah_config,
        tah_forward,
    )

    task = TwoHopTask(entities=8, pairs=4, queries=3)
    base = new_standard(task, Shape(layers=2, hidden=32, intermediate=64), 0).eval()
    batches = eval_batches(task, 6, seed=5)
    learned = new_tah(base, tah_config("mlp", 4, 16), seed=0)
    everything = predict(tah_forward(learned, threshold=0.0), task, batches)
    nothing = predict(tah_forward(learned, threshold=1.0), task, batches)
    depth1 = predict(tah_forward(learned, max_depth=1), task, batches)
    assert everything.tokens_iterated == 1.0 and nothing.tokens_iterated == 0.0
    assert depth1.tokens_iterated == 0.0
    # with LoRA still zero, depth 1 alone is the base model itself
    with torch.no_grad():
        plain = base(input_ids=batches[0].input_ids).logits
    assert torch.equal(
        depth1.predicted[: plain.shape[0] * task.queries],
        plain[:, task.answer_positions() - 1].argmax(-1).flatten(),
    )
    oracle = new_tah(base, tah_config("label", 4, 16), seed=0)
    routed = predict(tah_forward(oracle, labeller=base), task, batches)
    # oracle routing iterates exactly the answers the labeller (here: the base) gets wrong
    assert torch.equal(routed.answers_iterated, ~depth1.correct)


def test_every_phase_names_only_its_own_jobs_as_dependencies(tmp_path):
    """``run_jobs`` refuses a dependency outside the job list, and phases run one at a time."""
    from tah.repro.twohop.study import ARM_GATE_JOBS, BASE_JOBS, TAH_JOBS, _jobs, preset

    config = preset("quick").with_overrides(["seeds=[0,1]"])
    for phase in (BASE_JOBS, ARM_GATE_JOBS, TAH_JOBS):
        jobs = _jobs(config, tmp_path, phase)
        names = {job.name for job in jobs}
        assert len(jobs) == 2 * len(phase)
        assert all(set(job.deps) <= names for job in jobs)
    base_jobs = {job.name: job for job in _jobs(config, tmp_path, BASE_JOBS)}
    assert base_jobs["seed1/base"].deps == ["seed1/shallow"]


def test_quick_study_with_a_bare_answer_base(tmp_path):
    from tah.repro.twohop.study import preset, run_study

    config = preset("quick").with_overrides(
        ["base_writes_intermediate=false", "finetune_written_share=0", "bare_arms=false"]
    )
    run_study(config, tmp_path, show_progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = saved["gate_runs"]["0"]
    assert all("written_second_step" not in runs[job] for job in ("shallow", "base"))
    assert 0.0 <= saved["per_seed"]["0"]["tahplus"]["accuracy"]["gf"] <= 1.0


def test_tah_arms_do_not_depend_on_the_global_generator(tmp_path):
    from tah.repro.twohop.jobs import run_job
    from tah.repro.twohop.study import preset, run_study

    config = preset("quick").with_overrides(["bare_arms=false"])
    run_study(config, tmp_path, show_progress=False)
    result = tmp_path / "seed0" / "alwaysthink" / "result.json"
    first = json.loads(result.read_text())
    torch.manual_seed(12345)  # another process history: the LoRA must initialise the same
    torch.rand(100)
    run_job(config.to_dict(), str(tmp_path), 0, "alwaysthink")
    second = json.loads(result.read_text())
    assert first["train_loss"] == second["train_loss"]
    assert first["test"]["correct"] == second["test"]["correct"]


def test_flops_per_token_against_a_count_by_hand():
    """Standard: 2 x (q, k, v, o, gate, up, down) x layers + the LM head; AlwaysThink: two such
    passes plus LoRA (r x (in + out) per projection) and the soft embedding; TaH+ in between."""
    from tah.repro.twohop.cost import arm_costs
    from tah.repro.twohop.study import preset

    config = preset("quick")
    h, i, layers, r = config.hidden, config.intermediate, config.shallow_layers, config.lora_r
    d = h // config.heads
    q, kv = config.heads * d, config.kv_heads * d
    projections = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    vocab = len(build_tokenizer(config.task_spec))
    per_pass = 2 * (layers * sum(a * b for a, b in projections) + h * vocab)
    lora = 2 * layers * sum(r * (a + b) for a, b in projections)
    cost = arm_costs(config, {"standard": 0.0, "alwaysthink": 1.0, "tahplus": 0.25, "deep": 0.0})
    assert cost["standard"]["flops_per_token"] == per_pass
    assert cost["alwaysthink"]["flops_per_token"] == 2 * per_pass + lora + 2 * vocab * h
    deep_pass = per_pass + 2 * (config.deep_layers - layers) * sum(a * b for a, b in projections)
    assert cost["deep"]["flops_per_token"] == deep_pass
    tah = cost["tahplus"]
    assert tah["passes_per_token"] == 1.25
    # the decider's share: what is left of TaH+ after its passes
    decider = tah["flops_per_token"] - per_pass - 0.25 * (per_pass + lora + 2 * vocab * h)
    assert 0 < decider < per_pass


def test_compare_runs_names_exactly_the_jobs_whose_accuracy_moved():
    from tah.repro.twohop.results import compare_runs

    def run(standard_gf: float, tahplus_gf: float) -> dict:
        acc = {"gf": standard_gf, "one_hop": 1.0}
        return {
            "gate_runs": {"0": {"base": {"test": {"accuracy": {"gf": 0.0}}}}},
            "per_seed": {
                "0": {
                    "standard": {"accuracy": acc},
                    "tahplus": {"accuracy": {"gf": tahplus_gf}},
                    "mcnemar_two_hop": {},
                }
            },
        }

    same = compare_runs(run(0.06, 1.0), run(0.06, 1.0))
    assert same == {"compared": 3, "differ": {}}
    moved = compare_runs(run(0.06, 0.9), run(0.06, 1.0))
    assert list(moved["differ"]) == ["seed0/tahplus"]
    assert moved["differ"]["seed0/tahplus"]["new"] == {"gf": 0.9}
