"""Notebook 4's checks name the mistake: each typical wrong answer gets its own message."""

import math
from collections import Counter

from rlhf_course.checks.nb04_human_feedback import (
    check_bt_probability,
    check_cohen_kappa,
    check_labels_to_records,
    check_majority,
)


def test_bt_probability_mistakes_are_named(fails_with):
    fails_with(check_bt_probability, lambda a, b, t: 1 / (1 + math.exp(-(b - a) / t)), "sign is reversed")
    fails_with(check_bt_probability, lambda a, b, t: 1 / (1 + math.exp(-(a - b))), "temperature is missing")
    fails_with(check_bt_probability, lambda a, b, t: 1 / (1 + math.exp(-(a - b) * t)), "multiplied")


def test_cohen_kappa_mistakes_are_named(fails_with):
    def observed(x, y):
        return sum(a == b for a, b in zip(x, y)) / len(x)

    def uniform_chance(x, y):
        p_e = 1 / len(set(x) | set(y))
        return (observed(x, y) - p_e) / (1 - p_e)

    fails_with(check_cohen_kappa, observed, "observed agreement")
    fails_with(check_cohen_kappa, uniform_chance, "each rater's own rate")


def test_majority_and_records_mistakes_are_named(fails_with):
    fails_with(check_majority, lambda votes: Counter(votes).most_common(1)[0][0] if votes else None,
                "top answers tie")

    def keeps_ties(labels, much_better_margin=1.0):
        return [{"prompt": [{"role": "user", "content": l.prompt}],
                 "chosen": [{"role": "assistant", "content": l.answer_a}],
                 "rejected": [{"role": "assistant", "content": l.answer_b}], "margin": 0.0} for l in labels]

    def a_always_chosen(labels, much_better_margin=1.0):
        return [r for r, l in zip(keeps_ties(labels), labels) if l.decision in ("a", "b")]

    fails_with(check_labels_to_records, keeps_ties, "ties and skips must be dropped")
    fails_with(check_labels_to_records, a_always_chosen, "'b' decision")
