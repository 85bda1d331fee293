"""Notebook 4's checks cannot be fooled: the package references pass, and every wrong answer below - a
list changed in place, one margin only, an overflow, a division by zero, and each promised mistake - gets
✗ with its own message."""

import math
from collections import Counter

import pytest

from rlhf_course import feedback
from rlhf_course.checks.core import run_check as run
from rlhf_course.checks.nb04_human_feedback import (
    check_bradley_terry,
    check_cohen_kappa,
    check_labels_to_records,
    check_majority,
    labels_to_records_reference,
)


@pytest.mark.parametrize("check_fn, reference", [(check_bradley_terry, feedback.bradley_terry),
                                                 (check_cohen_kappa, feedback.cohen_kappa),
                                                 (check_majority, feedback.majority),
                                                 (check_labels_to_records, labels_to_records_reference)])
def test_the_package_reference_passes(check_fn, reference):
    assert check_fn.reference is reference
    assert run(check_fn, reference)[0] is True


def observed(x, y):
    return sum(a == b for a, b in zip(x, y)) / len(x)


def uniform_chance(x, y):
    p_e = 1 / len(set(x) | set(y))
    return (observed(x, y) - p_e) / (1 - p_e)


def kappa_divides_by_zero(x, y):
    n, c1, c2 = len(x), Counter(x), Counter(y)
    p_e = sum(c1[k] * c2[k] for k in c1) / n**2
    return (observed(x, y) - p_e) / (1 - p_e)


def keeps_ties(labels, much_better_margin=1.0):
    return [{"prompt": [{"role": "user", "content": l.prompt}],
             "chosen": [{"role": "assistant", "content": l.answer_a}],
             "rejected": [{"role": "assistant", "content": l.answer_b}], "margin": 0.0} for l in labels]


def a_always_chosen(labels, much_better_margin=1.0):
    return [r for r, l in zip(keeps_ties(labels), labels) if l.decision in ("a", "b")]


def margin_fixed(labels, much_better_margin=1.0):
    return [r | {"margin": 1.0 if r["margin"] else 0.0} for r in feedback.labels_to_preferences(labels)]


def drops_ties_in_place(labels, much_better_margin=1.0):
    labels[:] = [l for l in labels if l.decision in ("a", "b")]
    return feedback.labels_to_preferences(labels, much_better_margin=much_better_margin)


def sorts_in_place(votes):
    votes.sort()
    return feedback.majority(votes)


WRONG = {
    check_bradley_terry: [
        (lambda a, b, t: 1 / (1 + math.exp(-(b - a) / t)), "sign is reversed"),
        (lambda a, b, t: 1 / (1 + math.exp(-(a - b))), "temperature is missing"),
        (lambda a, b, t: 1 / (1 + math.exp(-(a - b) * t)), "multiplied"),
        (lambda a, b, t: 1 / (1 + math.exp(-(a - b) / t)), "overflowed"),          # unstable at a huge gap
        (lambda a, b, t: 1 / (1 + math.exp(-(a - b) / 0.1)), "bradley_terry("),    # one temperature only
    ],
    check_cohen_kappa: [
        (observed, "observed agreement"),
        (uniform_chance, "each rater's own rate"),
        (kappa_divides_by_zero, "division by zero"),
    ],
    check_majority: [
        (lambda votes: Counter(votes).most_common(1)[0][0] if votes else None, "top answers tie"),
        (sorts_in_place, "changed `votes` in place"),
    ],
    check_labels_to_records: [
        (keeps_ties, "ties and skips must be dropped"),
        (a_always_chosen, "'b' decision"),
        (margin_fixed, "margin should be"),                                         # one margin only
        (drops_ties_in_place, "changed `labels` in place"),
    ],
}
CASES = [pytest.param(check_fn, fn, words, id=f"{check_fn.__name__}:{words}")
         for check_fn, wrongs in WRONG.items() for fn, words in wrongs]


@pytest.mark.parametrize("check_fn, wrong, words", CASES)
def test_each_wrong_answer_gets_its_message(check_fn, wrong, words, fails_with):
    fails_with(check_fn, wrong, words)
