"""Notebook 5's checks cannot be fooled: the package references pass (same signature and return as the
exercises), and every wrong answer below - in place, at one scale or threshold only, unstable, ties, and
each promised mistake - gets ✗ with its own message."""

import pytest
import torch
import torch.nn.functional as F

from rlhf_course import reward_model as rm
from rlhf_course import toyworld
from rlhf_course.checks.core import run_check as run
from rlhf_course.checks.nb05_reward_modelling import (
    check_bayes_accuracy,
    check_bradley_terry_loss,
    check_combine_rewards,
    check_margin_loss,
    check_preference_accuracy,
)


@pytest.mark.parametrize("check_fn, reference", [(check_bradley_terry_loss, rm.bradley_terry_loss),
                                                 (check_preference_accuracy, rm.preference_accuracy),
                                                 (check_margin_loss, rm.bradley_terry_loss),
                                                 (check_bayes_accuracy, toyworld.bayes_accuracy),
                                                 (check_combine_rewards, rm.combine_rewards)])
def test_the_package_reference_passes(check_fn, reference):
    assert check_fn.reference is reference
    assert run(check_fn, reference)[0] is True


def acc(c, r):
    return rm.preference_accuracy(c, r)


def _bt_in_place(c, r):
    c -= r
    return -F.logsigmoid(c).mean(), acc(c + r, r)


BT = [
    (lambda c, r: (-F.logsigmoid(r - c).mean(), acc(c, r)), "flipped"),
    (lambda c, r: (-torch.sigmoid(c - r).mean(), acc(c, r)), "mean of sigmoid"),
    (lambda c, r: (-F.logsigmoid(c - r).sum(), acc(c, r)), "summed"),
    (lambda c, r: (-torch.log(torch.sigmoid(c - r)).mean(), acc(c, r)), "infinite loss"),     # unstable
    (lambda c, r: (torch.tensor(-F.logsigmoid(c - r).mean().item()), acc(c, r)), "gradient"),
    (lambda c, r: -F.logsigmoid(c - r).mean(), "(loss, accuracy)"),                           # the old signature
    (lambda c, r: (-F.logsigmoid(2.0 * (c - r)).mean(), acc(c, r)), "expected"),              # a stray scale
    (_bt_in_place, "changed `c` in place"),
]

ACCURACY = [
    (lambda c, r: (c > r).float().mean(), "ties count as wrong"),
    (lambda c, r: (c >= r).float().mean(), "ties count as right"),
    (lambda c, r: ((c < r).float() + 0.5 * (c == r).float()).mean(), "swapped"),
    (lambda c, r: ((c > r).float() + 0.5 * (c == r).float()).sum(), "a count"),
]


def _margin_in_place(c, r, m):
    c -= m
    return rm.bradley_terry_loss(c, r)


MARGIN = [
    (lambda c, r, m: rm.bradley_terry_loss(c, r), "forgot the margin"),
    (lambda c, r, m: (-F.logsigmoid(c - r + m).mean(), acc(c, r)), "subtract"),
    (lambda c, r, m: (-F.logsigmoid(c - r).mean() + m.mean(), acc(c, r)), "outside"),
    (lambda c, r, m: (-F.logsigmoid(c - r - m.mean()).mean(), acc(c, r)), "one margin"),
    (lambda c, r, m: (-torch.log(torch.sigmoid(c - r - m)).mean(), acc(c, r)), "F.logsigmoid"),   # unstable
    (lambda c, r, m: (-F.logsigmoid(c - r - (m > 0).float()).mean(), acc(c, r)), "expected"),     # margin 0 or 1
    (_margin_in_place, "changed `c` in place"),
]

BAYES = [
    (lambda ps: sum(ps) / len(ps), "averaged p_chosen"),
    (lambda ps: 1.0, "100% is impossible"),
    (lambda ps: sum(min(p, 1 - p) for p in ps) / len(ps), "error rate"),
    (lambda ps: sum(p > 0.5 for p in ps) / len(ps), "0/1 outcome"),
    (lambda ps: (ps.sort(), sum(max(p, 1 - p) for p in ps) / len(ps))[1], "changed `ps` in place"),
]


def rule(h, s, use):
    return torch.where(use, s, h)


def _combine(use_fn):
    def combine(h, s, *, unsafe=None, safety_threshold=0.15, whiten_rewards=True):
        u = torch.zeros_like(h, dtype=torch.bool) if unsafe is None else unsafe
        out = rule(h, s, use_fn(u, s, safety_threshold))
        return rm.whiten(out) if whiten_rewards else out
    return combine


def _combine_in_place(h, s, *, unsafe=None, safety_threshold=0.15, whiten_rewards=True):
    use = torch.sigmoid(s) < safety_threshold
    if unsafe is not None:
        use |= unsafe
        unsafe |= use  # writes the caller's flags
    out = torch.where(use, s, h)
    return rm.whiten(out) if whiten_rewards else out


COMBINE = [
    (lambda h, s, **kw: h, "helpfulness reward everywhere"),
    (_combine(lambda u, s, t: u), "only the unsafe flag"),
    (_combine(lambda u, s, t: u | (s < t)), "a probability"),
    (_combine(lambda u, s, t: torch.sigmoid(s) < t), "flag is ignored"),
    (_combine(lambda u, s, t: u | (torch.sigmoid(s) > t)), "comparison is reversed"),
    (_combine(lambda u, s, t: u & (torch.sigmoid(s) < t)), "both conditions"),
    (_combine(lambda u, s, t: u | (torch.sigmoid(s) < 0.15)), "threshold"),              # the default threshold only
    (lambda h, s, **kw: (h + s) / 2, "sum"),
    (lambda h, s, *, unsafe=None, safety_threshold=0.15, whiten_rewards=True:
        rm.combine_rewards(h, s, unsafe=unsafe, safety_threshold=safety_threshold), "as it is"),   # always whitens
    (lambda h, s, *, unsafe=None, safety_threshold=0.15, whiten_rewards=True:
        rm.combine_rewards(h, s, unsafe=unsafe, safety_threshold=safety_threshold, whiten_rewards=False),
     "whitened"),                                                                                 # never whitens
    (_combine_in_place, "changed `unsafe` in place"),
]

CASES = [pytest.param(check_fn, fn, words, id=f"{check_fn.__name__}:{words}")
         for check_fn, wrongs in ((check_bradley_terry_loss, BT), (check_preference_accuracy, ACCURACY),
                                  (check_margin_loss, MARGIN), (check_bayes_accuracy, BAYES),
                                  (check_combine_rewards, COMBINE))
         for fn, words in wrongs]


@pytest.mark.parametrize("check_fn, wrong, words", CASES)
def test_each_wrong_answer_gets_its_message(check_fn, wrong, words, fails_with):
    fails_with(check_fn, wrong, words)
