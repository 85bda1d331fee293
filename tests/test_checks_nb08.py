"""Notebook 8's checks cannot be fooled: each typical wrong answer - in place through a `.view`, and each
promised mistake - gets its own message, and the package's helpers they compare with (the references
the notebook falls back on) are right on hand-computed examples and pass."""

import math

import pytest
import torch

from rlhf_course import toyworld
from rlhf_course.best_of_n import best_of_n_kl
from rlhf_course.checks import nb08_beyond as nb08
from rlhf_course.checks.core import run_check as run
from rlhf_course.evaluation import is_refusal, refusal_rate, win_rate_from_scores
from rlhf_course.grpo import group_relative_advantages, rloo_advantages


@pytest.mark.parametrize("check_fn, reference", [(nb08.check_best_of_n_kl, best_of_n_kl),
                                                 (nb08.check_group_relative_advantages, group_relative_advantages),
                                                 (nb08.check_rloo_advantages, rloo_advantages),
                                                 (nb08.check_win_rate, win_rate_from_scores),
                                                 (nb08.check_refusal_rate, refusal_rate)])
def test_the_package_reference_passes(check_fn, reference):
    assert check_fn.reference is reference
    assert run(check_fn, reference)[0] is True


def _grpo_in_place(r, g):
    """The issue's example: normalised through a view, which writes into the caller's rewards."""
    x = r.view(-1, g)
    x -= x.mean(1, keepdim=True)
    x /= x.std(1, keepdim=True) + 1e-4
    return r


def _rloo_in_place(r, k):
    x = r.view(-1, k)
    x -= (x.sum(1, keepdim=True) - x) / (k - 1)
    return r


def test_grpo_and_rloo_helpers_on_a_hand_computed_group():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    std = torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item()  # unbiased, as TRL's nanstd
    assert group_relative_advantages(r, 4)[:4].tolist() == pytest.approx([x / (std + 1e-4) for x in (-1.5, -0.5, 0.5, 1.5)])
    assert group_relative_advantages(r, 4)[4:].tolist() == [0.0] * 4  # equal rewards: no signal
    # leave-one-out: 1 - (2+3+4)/3 = -2, ...; equals k/(k-1) * (r - mean)
    assert rloo_advantages(r, 4).tolist() == pytest.approx([-2.0, -2 / 3, 2 / 3, 2.0, 0, 0, 0, 0])


def test_exact_best_of_n_kl_approaches_the_formula():
    for n in (2, 4, 16):
        assert nb08.exact_best_of_n_kl(n) == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-2)


@pytest.mark.parametrize("wrong, message", [
    (lambda n: math.log(n), "upper bound"),
    (lambda n: math.log(n) + (n - 1) / n, "wrong sign"),
    (lambda n: math.log2(n) - (n - 1) / n, "natural logarithm"),
])
def test_best_of_n_kl_mistakes(wrong, message, fails_with):
    fails_with(nb08.check_best_of_n_kl, wrong, message)


def _batch_normalised(r, g):
    return (r - r.mean()) / (r.std() + 1e-4)


def _centred_only(r, g):
    x = r.view(-1, g)
    return (x - x.mean(1, keepdim=True)).view(-1)


def _no_eps(r, g):
    x = r.view(-1, g)
    return ((x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)).view(-1)


def _strided(r, g):
    x = r.view(g, -1)
    return ((x - x.mean(0, keepdim=True)) / (x.std(0, keepdim=True) + 1e-4)).view(-1)


@pytest.mark.parametrize("wrong, message", [
    (_batch_normalised, "whole batch"),
    (_centred_only, "forgot to divide by the group's std"),
    (_no_eps, "NaN or inf"),
    (_strided, "CONSECUTIVE"),
    (_grpo_in_place, "changed `r` in place"),
])
def test_group_relative_advantages_mistakes(wrong, message, fails_with):
    fails_with(nb08.check_group_relative_advantages, wrong, message)


def test_group_relative_advantages_accepts_the_biased_std_too():
    def biased(r, g):
        x = r.view(-1, g)
        return ((x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True, correction=0) + 1e-4)).view(-1)

    assert run(nb08.check_group_relative_advantages, biased)[0]
    assert run(nb08.check_group_relative_advantages, group_relative_advantages)[0]


def _divide_by_k(r, k):
    x = r.view(-1, k)
    return (x - (x.sum(1, keepdim=True) - x) / k).view(-1)


@pytest.mark.parametrize("wrong, message", [
    (_centred_only, "r_i included"),
    (_divide_by_k, "k - 1 other answers"),
    (lambda r, k: r - (r.sum() - r) / (r.numel() - 1), "whole batch"),
    (group_relative_advantages, "GRPO's advantage"),
    (_rloo_in_place, "changed `r` in place"),
])
def test_rloo_advantages_mistakes(wrong, message, fails_with):
    fails_with(nb08.check_rloo_advantages, wrong, message)
    assert run(nb08.check_rloo_advantages, rloo_advantages)[0]


@pytest.mark.parametrize("wrong, message", [
    (lambda a, b: sum(x > y for x, y in zip(a, b)) / len(a), "counted as losses"),
    (lambda a, b: sum(x >= y for x, y in zip(a, b)) / len(a), "counted as wins"),
    (lambda a, b: sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a), "floating point"),
    (lambda a, b: sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)), "not a count"),
    (lambda a, b: (a.sort(), b.sort(), win_rate_from_scores(a, b))[2], "changed `a` in place"),
])
def test_win_rate_mistakes(wrong, message, fails_with):
    fails_with(nb08.check_win_rate, wrong, message)


def _overall(prompts, responses, harmful=False):
    return sum(map(is_refusal, responses)) / len(responses)


def _no_nan(prompts, responses, harmful=False):
    flags = [is_refusal(r) for p, r in zip(prompts, responses) if p.harmful == harmful]
    return sum(flags) / len(flags)


def _inverted(prompts, responses, harmful=False):
    flags = [is_refusal(r) for p, r in zip(prompts, responses) if p.harmful != harmful]
    return sum(flags) / len(flags) if flags else math.nan


@pytest.mark.parametrize("wrong, message", [
    (_overall, "over all prompts"),
    (_no_nan, "divided by 0"),
    (_inverted, "the other kind"),
])
def test_refusal_rate_mistakes(wrong, message, fails_with):
    fails_with(nb08.check_refusal_rate, wrong, message)


def test_refusal_cases_cover_both_kinds_of_prompt():
    (prompts, ideal), *_ = nb08._refusal_cases()
    assert all(is_refusal(r) == p.harmful for p, r in zip(prompts, ideal))
    assert toyworld.REFUSAL[0] in ideal[[p.harmful for p in prompts].index(True)]
