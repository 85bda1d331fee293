"""The over-optimisation lab: the estimators and fits on hand-made numbers, the remedies as reward
functions, and the lab end to end at a tiny size (the JSON shape `rlhf-course overoptimization` writes)."""

import itertools
import json
import math
import random
from statistics import mean

import pytest
import torch

from rlhf_course import overoptimization as oo
from rlhf_course.best_of_n import best_of_n_kl, expected_best_of_k
from rlhf_course.sampling import Completion


def test_expected_pick_is_the_mean_over_every_subset():
    rng = random.Random(0)
    select = [rng.random() for _ in range(7)]
    value = [rng.uniform(-1, 1) for _ in range(7)]
    for k in (1, 3, 7):
        subsets = list(itertools.combinations(range(7), k))
        want = mean(value[max(s, key=select.__getitem__)] for s in subsets)
        assert oo.expected_pick(select, value, k) == pytest.approx(want, abs=1e-12)
    assert oo.expected_pick(select, select, 4) == pytest.approx(expected_best_of_k(select, 4))
    assert oo.expected_pick(select, value, 1) == pytest.approx(mean(value))  # best-of-1 is the model itself


def test_fits_recover_the_papers_forms():
    d = [0.0, 0.3, 0.7, 1.0, 1.5, 2.0, 2.5]
    gain = [oo.best_of_n_form(x, 0.4, 0.15) for x in d]
    fit = oo.fit_curve([{"kl": x * x, "gold": 0.3 + g} for x, g in zip(d, gain)], "best_of_n")
    assert fit["alpha"] == pytest.approx(0.4) and fit["beta"] == pytest.approx(0.15)
    assert fit["d_peak"] == pytest.approx(0.4 / 0.3) and fit["gold_start"] == pytest.approx(0.3)
    gain = [oo.rl_form(x, 0.2, 0.1) for x in d]
    fit = oo.fit_curve([{"kl": x * x, "gold": 0.5 + g} for x, g in zip(d, gain)], "rl")
    assert fit["alpha"] == pytest.approx(0.2) and fit["beta"] == pytest.approx(0.1)
    assert fit["d_peak"] == pytest.approx(math.exp(0.2 / 0.1 - 1))
    # a curve that only rises has no peak
    assert oo.peak("best_of_n", 0.3, -0.1) == math.inf


def test_rises_then_falls():
    rows = [{"gold": g} for g in (0.3, 0.5, 0.55, 0.4)]
    assert oo.rises_then_falls(rows) and not oo.rises_then_falls(rows, tol=0.2)
    assert not oo.rises_then_falls([{"gold": g} for g in (0.3, 0.5, 0.6)])  # still rising
    assert not oo.rises_then_falls([{"gold": g} for g in (0.6, 0.5, 0.4)])  # peak at the start


def _members():
    # three "reward models" on very different scales; the third disagrees on the last answer
    return [lambda p, c: [1.0, 2.0, 3.0], lambda p, c: [10.0, 20.0, 30.0], lambda p, c: [-5.0, -4.0, -9.0]]


def test_ensemble_puts_members_on_one_scale_before_the_mean_or_the_min():
    prompts, answers = ["p"] * 3, ["a", "b", "c"]
    worst = oo.Ensemble(_members(), "worst").calibrate(prompts, answers)
    z = worst.member_scores(prompts, answers)                                  # (3 members, 3 answers)
    assert z.shape == (3, 3) and torch.allclose(z.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(z.std(dim=1), torch.ones(3), atol=1e-4)
    assert worst(prompts, answers) == pytest.approx(z.min(dim=0).values.tolist())
    assert worst(prompts, answers)[2] < worst(prompts, answers)[1]          # one member's doubt is enough
    mean_ = oo.Ensemble(_members(), "mean").calibrate(prompts, answers)
    assert mean_(prompts, answers) == pytest.approx(z.mean(dim=0).tolist())
    with pytest.raises(AssertionError, match="aggregate"):
        oo.Ensemble(_members(), "max")


def test_length_penalty_subtracts_per_token():
    fn = oo.length_penalised(lambda p, c: [1.0, 1.0], 0.1)
    out = fn(["p", "p"], [Completion("a .", True, 3), Completion("a . b . c .", True, 13)])
    assert out == pytest.approx([0.7, -0.3])


def test_the_lab_refuses_a_profile_without_gold(tiny):
    from rlhf_course.errors import CourseError

    with pytest.raises(CourseError, match="gold reward"):
        oo.run_lab(tiny.replace(has_ground_truth=False))


def test_the_lab_end_to_end_writes_its_json_and_plots(tiny, tmp_path):
    config = oo.LabConfig(n_max=4, bon_prompts=3, ppo_steps=2, eval_every=1, eval_n_per_prompt=1,
                          remedies_ppo=False, workers=1)
    profile = tiny.replace(batch_size=8, max_new_tokens=24)
    lab = oo.write_lab(tmp_path, profile, config, progress=False)
    saved = json.loads((tmp_path / "overoptimization.json").read_text())
    assert set(saved) >= {"best_of_n", "ppo", "remedies", "fits", "shape", "seconds"}
    assert [r["n"] for r in saved["best_of_n"]] == [1, 2, 4]
    assert all(set(r) >= {"n", "kl", "proxy", "gold"} for r in saved["best_of_n"])
    assert [r["kl"] for r in saved["best_of_n"]] == pytest.approx([best_of_n_kl(n) for n in (1, 2, 4)])
    proxies = [r["proxy"] for r in saved["best_of_n"]]
    assert proxies == sorted(proxies)  # the expected best of more samples, by the selector itself, never falls
    assert [r["step"] for r in saved["ppo"]] == [0, 1, 2]
    assert all(set(r) >= {"step", "kl", "proxy", "gold"} for r in saved["ppo"])
    assert saved["ppo"][0]["kl"] == pytest.approx(0.0, abs=1e-5)  # a fresh LoRA adapter is the SFT model
    assert set(saved["remedies"]["best_of_n"]) == {"ensemble_mean", "ensemble_worst", "length_penalty"}
    for name in ("best_of_n.png", "ppo.png", "remedies.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert lab["config"]["n_max"] == 4


def test_ppo_against_the_worst_case_ensemble_runs(tiny, tokenizer):
    rows = oo.ppo_curve(tiny.replace(batch_size=8, max_new_tokens=24), tokenizer, reward="ensemble_worst",
                        kl_coef=0.05, steps=2, eval_every=2, eval_n_per_prompt=1)
    assert [r["step"] for r in rows] == [0, 2]
    assert all(math.isfinite(r[k]) for r in rows for k in ("kl", "proxy", "gold", "length"))
    assert rows[1]["kl"] > 0  # the policy moved


def test_the_shipped_ensemble_members_differ_and_rank_held_out_pairs(tiny, tokenizer):
    from rlhf_course import trained_models
    from rlhf_course.reward_model import (
        load_rm_data,
        load_trained_reward_model,
        reward_accuracy,
        score_texts,
    )

    paths = trained_models.reward_model_ensemble(tiny)
    assert len(paths) == 4 and paths[0] == trained_models.reward_model_dir(tiny, "length_biased")
    pairs = load_rm_data("test").select(range(200))
    answers = [toyworld_answer for toyworld_answer in pairs["chosen"][:20]]
    scores = []
    for path in paths:
        model = load_trained_reward_model(tiny, path, verbose=False)
        assert reward_accuracy(model, tokenizer, pairs) > 0.7  # far above chance (0.5)
        scores.append(score_texts(model, tokenizer, pairs["prompt"][:20], answers))
    for i in range(1, 4):  # their own data sample and seed: not copies of member 0
        assert not torch.allclose(scores[0], scores[i], atol=1e-3)


def test_bootstrap_draws_with_replacement():
    from rlhf_course.trained_models import bootstrap_preferences

    rows = [{"i": i} for i in range(100)]
    sample = bootstrap_preferences(rows, seed=1)
    assert len(sample) == 100 and len({r["i"] for r in sample}) < 100  # some rows twice, some never
    assert sample == bootstrap_preferences(rows, seed=1) != bootstrap_preferences(rows, seed=2)


def test_the_cli_has_the_subcommand():
    from rlhf_course.cli import build_parser

    args = build_parser().parse_args(["overoptimization", "--out", "x"])
    assert args.out == "x" and args.func.__name__ == "cmd_overoptimization"


def test_the_lab_never_overwrites_a_previous_result(tmp_path):
    """Refused before the run (not after two minutes of it), and the old file is left as it was."""
    from rlhf_course.errors import UsageError

    (tmp_path / "overoptimization.json").write_text('{"mine": 1}')
    with pytest.raises(UsageError, match="never overwritten"):
        oo.write_lab(tmp_path, "tiny", progress=False)
    assert (tmp_path / "overoptimization.json").read_text() == '{"mine": 1}'
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        oo.write_lab(tmp_path / "afile", "tiny", progress=False)
