"""The two-hop study's training recipes: base restarts and fine-tuning on mixed formats."""

import json

import pytest
import torch

from tah.data.twohop import TwoHopTask
from tah.errors import ConfigError


def test_base_restarts_from_a_fresh_init_only_while_it_misses_the_precondition(
    tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from tah.repro.twohop.jobs import run_job
    from tah.repro.twohop.study import GATE, preset

    config = preset("quick").with_overrides(["base_restarts=2"])
    run_job(config.to_dict(), str(tmp_path), 0, "shallow")

    def base() -> dict:
        run_job(config.to_dict(), str(tmp_path), 0, "base")
        return json.loads((tmp_path / "seed0" / "base" / "result.json").read_text())

    # Never reached: every attempt trains S + R rounds; the kept one is the best on validation.
    monkeypatch.setitem(GATE, "base_one_hop_min", 101.0)
    never = base()
    assert [a["attempt"] for a in never["attempts"]] == [0, 1, 2]
    assert all(len(a["rounds"]) == config.base_max_rounds + 1 for a in never["attempts"])
    finals = [a["rounds"][-1]["validation_one_hop"] for a in never["attempts"]]
    assert never["rounds"] == never["attempts"][never["attempt_kept"]]["rounds"]
    assert never["rounds"][-1]["validation_one_hop"] == max(finals)
    from tah.repro.twohop.report import _rounds_text

    shown = _rounds_text(never)
    assert shown.count("attempt ") == 3 and f"attempt {never['attempt_kept']} (kept)" in shown
    # Reached at once: attempt 0 is the shallow model itself, untouched (as before restarts).
    monkeypatch.setitem(GATE, "base_one_hop_min", 0.0)
    at_once = base()
    assert at_once["attempts"] == [{"attempt": 0, "rounds": at_once["rounds"]}]
    assert len(at_once["rounds"]) == 1 and at_once["attempt_kept"] == 0
    load = AutoModelForCausalLM.from_pretrained
    shallow = load(str(tmp_path / "seed0" / "shallow" / "model")).state_dict()
    kept = load(str(tmp_path / "seed0" / "base" / "model")).state_dict()
    assert all(torch.equal(shallow[k], kept[k]) for k in shallow)


def test_a_base_resumes_by_attempt_after_a_kill_or_with_more_restarts(tmp_path, monkeypatch):
    """Killed mid-attempt, or finished below the precondition and given more restarts, the base
    continues with the next attempt and ends exactly where an uninterrupted base ends."""
    from transformers import AutoModelForCausalLM

    from tah.repro.twohop import jobs as twohop_jobs
    from tah.repro.twohop.jobs import reopen_failed_bases, run_job
    from tah.repro.twohop.study import GATE, preset

    monkeypatch.setitem(GATE, "base_one_hop_min", 101.0)  # never reached: every attempt runs
    three = preset("quick").with_overrides(["base_restarts=2"])
    two = preset("quick").with_overrides(["base_restarts=1"])

    def base(config, where) -> dict:
        run_job(config.to_dict(), str(where), 0, "base")
        return json.loads((where / "seed0" / "base" / "result.json").read_text())

    def weights(where):
        path = where / "seed0" / "base" / "model"
        return AutoModelForCausalLM.from_pretrained(str(path)).state_dict()

    for where in ("straight", "killed", "extended"):
        run_job(three.to_dict(), str(tmp_path / where), 0, "shallow")
    straight = base(three, tmp_path / "straight")

    # Killed in attempt 2: attempts 0 and 1 are on disk; the rerun trains attempt 2 only.
    train = twohop_jobs._train_standard

    def dies_in_attempt_2(cfg, model, steps, stream, report, **kwargs):
        if stream == twohop_jobs._restart_stream(0, 2, 0):
            raise KeyboardInterrupt
        train(cfg, model, steps, stream, report, **kwargs)

    monkeypatch.setattr(twohop_jobs, "_train_standard", dies_in_attempt_2)
    with pytest.raises(KeyboardInterrupt):
        base(three, tmp_path / "killed")
    state = json.loads((tmp_path / "killed/seed0/base/attempts.json").read_text())
    assert [a["attempt"] for a in state["attempts"]] == [0, 1]
    monkeypatch.setattr(twohop_jobs, "_train_standard", train)
    resumed = base(three, tmp_path / "killed")

    # Finished with one restart, then reopened with two: attempt 2 is added.
    first = base(two, tmp_path / "extended")
    assert len(first["attempts"]) == 2
    assert reopen_failed_bases(tmp_path / "extended", two) == []  # nothing more allowed
    assert reopen_failed_bases(tmp_path / "extended", three) == [0]
    assert not (tmp_path / "extended/seed0/base/result.json").exists()
    extended = base(three, tmp_path / "extended")

    for other, where in ((resumed, "killed"), (extended, "extended")):
        assert other["attempts"] == straight["attempts"]
        assert other["attempt_kept"] == straight["attempt_kept"]
        assert other["test"]["correct"] == straight["test"]["correct"]
        a, b = weights(tmp_path / "straight"), weights(tmp_path / where)
        assert all(torch.equal(a[k], b[k]) for k in a)
        leftovers = {"attempts.json", "kept-model"} & {
            p.name for p in (tmp_path / where / "seed0/base").iterdir()
        }
        assert not leftovers


def test_restarted_bases_draw_their_own_seeds_and_streams():
    from tah.repro.twohop.jobs import _restart_seed, _restart_stream, _stream

    seeds = {_restart_seed(s, a) for s in range(3) for a in range(1, 3)}
    assert len(seeds) == 6 and not seeds & {0, 1, 2}
    streams = {_restart_stream(s, a, k) for s in range(3) for a in range(3) for k in range(1, 3)}
    streams |= {_restart_stream(s, a, 0) for s in range(3) for a in range(1, 3)}
    others = {_stream(s, w) for s in range(3) for w in range(3)}  # gate, fine-tune, decider
    assert len(streams) == 3 * 3 * 2 + 3 * 2 and not streams & others


def test_mixed_batches_stack_written_and_bare_problems():
    from dataclasses import replace

    from tah.data.twohop import sample_batch, sample_mixed_batch

    task = TwoHopTask(separators=True)
    written = replace(task, written_intermediate=True)
    mixed = sample_mixed_batch(task, 10, 4, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    head, tail = sample_batch(written, 4, gen), sample_batch(task, 6, gen)
    assert torch.equal(mixed.input_ids, torch.cat([head.input_ids, tail.input_ids]))
    assert torch.equal(mixed.labels, torch.cat([head.labels, tail.labels]))
    assert torch.equal(mixed.answers, torch.cat([head.answers, tail.answers]))
    # written rows supervise one more token per two-hop query than bare rows
    per_row = (mixed.labels != -100).sum(1)
    two_hop = (mixed.kinds == 2).sum(1)
    assert torch.equal(per_row, task.queries + two_hop * torch.tensor([1] * 4 + [0] * 6))
    # none written: exactly the plain stream
    plain = sample_batch(task, 10, torch.Generator().manual_seed(3))
    none = sample_mixed_batch(task, 10, 0, torch.Generator().manual_seed(3))
    assert torch.equal(plain.input_ids, none.input_ids)
    with pytest.raises(ConfigError, match="written problems per batch"):
        sample_mixed_batch(task, 10, 11, torch.Generator())


def test_finetune_written_share_is_checked_and_reaches_the_arms(tmp_path):
    from tah.repro.twohop.study import preset

    with pytest.raises(ConfigError, match="finetune_written_share must be in"):
        preset("quick").with_overrides(["finetune_written_share=1.0"])
    with pytest.raises(ConfigError, match="needs base_writes_intermediate"):
        preset("quick").with_overrides(
            ["finetune_written_share=0.5", "base_writes_intermediate=false"]
        )
    config = preset("quick").with_overrides(["finetune_written_share=0.5"])
    assert config.written_per_batch == config.batch // 2
    # The standard arm trains on other rows with the mix (same base, same stream seed).
    from tah.repro.twohop.jobs import run_job

    losses = {}
    for share in (0.0, 0.5):
        cfg = preset("quick").with_overrides([f"finetune_written_share={share}"]).to_dict()
        if share == 0.0:
            run_job(cfg, str(tmp_path), 0, "shallow")
            run_job(cfg, str(tmp_path), 0, "base")
        run_job(cfg, str(tmp_path), 0, "standard")
        saved = json.loads((tmp_path / "seed0" / "standard" / "result.json").read_text())
        losses[share] = saved["train_loss"]
    assert losses[0.0] != losses[0.5]


def test_a_bare_arm_is_its_mixed_arm_fine_tuned_without_written_rows(tmp_path):
    """``standard_bare`` under the 50/50 mix equals ``standard`` run with no written rows (the
    same base, stream, steps and lr), and differs from ``standard`` under the mix."""
    from tah.repro.twohop.jobs import run_job
    from tah.repro.twohop.study import preset

    mixed = preset("quick").with_overrides(["finetune_written_share=0.5"]).to_dict()
    bare = preset("quick").with_overrides(["finetune_written_share=0.0"]).to_dict()
    run_job(mixed, str(tmp_path), 0, "shallow")
    run_job(mixed, str(tmp_path), 0, "base")
    gate = {"passed": False, "enforced": False, "recorded_at": "then", "per_seed": {}}
    (tmp_path / "results.json").write_text(json.dumps({"gate": gate}))  # read by TaH arms

    def trained(config, name):
        run_job(config, str(tmp_path), 0, name)
        return json.loads((tmp_path / "seed0" / name / "result.json").read_text())

    for arm in ("standard", "alwaysthink"):
        fair = trained(mixed, f"{arm}_bare")
        reference = trained(bare, arm)
        assert fair["written_per_batch"] == 0 and fair["train_loss"] == reference["train_loss"]
        assert fair["test"]["correct"] == reference["test"]["correct"]
        if arm == "standard":  # and the mix does reach the mixed arm
            assert trained(mixed, arm)["train_loss"] != fair["train_loss"]


def test_the_decider_trains_on_its_own_mix_and_reads_the_previous_token(tmp_path):
    """decider_written_share reaches stage 2 only (stage 1 trains on the fine-tuning mix), and
    decider_previous_token reaches the saved TaH+ model."""
    from tah import TaHForCausalLM
    from tah.repro.twohop.jobs import run_job
    from tah.repro.twohop.study import preset

    base = preset("quick").with_overrides(["finetune_written_share=0.5"])
    run_job(base.to_dict(), str(tmp_path), 0, "shallow")
    run_job(base.to_dict(), str(tmp_path), 0, "base")
    (tmp_path / "results.json").write_text(json.dumps({"gate": {"per_seed": {"0": {}}}}))
    saved = {}
    for share in ("0.0", "0.5"):
        cfg = base.with_overrides([f"decider_written_share={share}"])
        run_job(cfg.to_dict(), str(tmp_path), 0, "tahplus")
        saved[share] = json.loads((tmp_path / "seed0" / "tahplus" / "result.json").read_text())
    assert saved["0.0"]["train_loss"] == saved["0.5"]["train_loss"]  # stage 1: the same rows
    assert saved["0.0"]["decider_train_loss"] != saved["0.5"]["decider_train_loss"]
    model = TaHForCausalLM.from_pretrained(tmp_path / "seed0" / "tahplus" / "model")
    assert model.config.decider_previous_token and model.decider.reads_previous_token


def test_the_base_curriculum_shrinks_only_the_first_steps_tables(tmp_path, monkeypatch):
    """base_first_pairs: the shallow job's and each restart's first S steps train on tables of
    that many pairs (at most the task's), the rounds and every later job on the task's own."""
    from tah.repro.twohop import jobs as twohop_jobs
    from tah.repro.twohop.jobs import run_job
    from tah.repro.twohop.study import GATE, preset

    with pytest.raises(ConfigError, match="base_first_pairs must be >= 2"):
        preset("quick").with_overrides(["base_first_pairs=1"])
    quick = preset("quick")
    assert quick.task_spec.pairs == 4 and quick.base_first_pairs == 2
    assert quick.base_first_task_spec.pairs == 2
    assert quick.base_first_task_spec.written_intermediate  # the base's format, fewer pairs
    assert quick.with_overrides(["base_first_pairs=9"]).base_first_task_spec.pairs == 4
    assert quick.with_overrides(["base_first_pairs=null"]).base_first_task_spec.pairs == 4

    seen: list[tuple[int, int]] = []  # (pairs, steps) of every training run
    real = twohop_jobs.train_loop

    def recording(params, loss, task, settings, *args, **kwargs):
        seen.append((task.pairs, settings.steps))
        return real(params, loss, task, settings, *args, **kwargs)

    monkeypatch.setattr(twohop_jobs, "train_loop", recording)
    monkeypatch.setitem(GATE, "base_one_hop_min", 101.0)  # every attempt trains S + R rounds
    config = quick.with_overrides(["base_restarts=1"]).to_dict()
    run_job(config, str(tmp_path), 0, "shallow")
    run_job(config, str(tmp_path), 0, "base")
    S, E, R = quick.base_steps, quick.base_round_steps, quick.base_max_rounds
    attempt_0 = [(2, S)]  # the shallow job
    rounds = [(4, E)] * R
    assert seen == attempt_0 + rounds + [(2, S)] + rounds  # attempt 1: a fresh init
    seen.clear()
    run_job(config, str(tmp_path), 0, "standard")
    assert seen == [(4, quick.finetune_steps)]


def test_a_run_saved_before_a_setting_existed_keeps_its_old_behaviour(tmp_path):
    """A results.json whose config lacks a later setting describes a run made without it: it
    is read with the value that reproduces that run, not the new default."""
    from tah.repro.twohop.config import LEGACY_SETTINGS
    from tah.repro.twohop.study import TwoHopConfig, run_study

    old = TwoHopConfig().to_dict()
    for key in ("base_first_pairs", "decider_previous_token", "decider_written_share"):
        del old[key]
    assert {k: LEGACY_SETTINGS[k] for k in ("base_first_pairs", "decider_previous_token")} == {
        "base_first_pairs": None,
        "decider_previous_token": False,
    }
    (tmp_path / "results.json").write_text(json.dumps({"config": old}))
    with pytest.raises(ConfigError, match="holds a run with other settings"):
        run_study(TwoHopConfig(), tmp_path, show_progress=False)
