"""Agreement between labellers: percent agreement, Cohen's kappa (two raters), Fleiss' kappa (many).

    compare_labels(human_labels, judge_labels)   # a person against an AI judge, matched by pair id
    labeller_agreement(class_labels)             # every labeller of a class

Decisions are compared on the answers' text (`canonical_choice`), not on the order A/B shown, so two
people who saw the answers swapped and preferred the same one agree.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable

from rlhf_course.feedback.label_file import Label


def canonical_choice(label: Label) -> str:
    """A decision independent of the order shown: "first" or "second" answer in sorted order, or "tie"
    (None for a skip). Two people who saw A and B swapped and preferred the same text agree."""
    if label.decision == "skip":
        return None
    if label.decision == "tie":
        return "tie"
    return "first" if label.chosen == min(label.answer_a, label.answer_b) else "second"


def cohen_kappa(ratings_1: list, ratings_2: list) -> float:
    """Cohen's kappa (1960) of two raters over the same items: (p_o - p_e) / (1 - p_e), with p_o the
    observed agreement and p_e the agreement expected by chance from each rater's own label rates.
    1 = perfect, 0 = chance level, < 0 = worse than chance. NaN when both always give one same label."""
    assert len(ratings_1) == len(ratings_2) > 0, "two non-empty lists of ratings of the same items"
    n = len(ratings_1)
    p_o = sum(x == y for x, y in zip(ratings_1, ratings_2)) / n
    count_1, count_2 = Counter(ratings_1), Counter(ratings_2)
    p_e = sum(count_1[c] * count_2[c] for c in count_1) / n**2
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan


def percent_agreement(ratings: list[list]) -> float:
    """Mean pairwise agreement: for each item rated by >= 2 raters, the share of rater pairs that gave
    the same label; averaged over those items (Fleiss' P-bar). Returns NaN when no item has two ratings."""
    per_item = []
    for item in ratings:
        n = len(item)
        if n >= 2:
            per_item.append(sum(c * (c - 1) for c in Counter(item).values()) / (n * (n - 1)))
    return sum(per_item) / len(per_item) if per_item else math.nan


def fleiss_kappa(ratings: list[list]) -> float:
    """Fleiss' kappa (1971) for many raters: (P-bar - P_e) / (1 - P_e). `ratings`: one list of labels per
    item (any number of raters; items with fewer than two ratings are ignored). P-bar is the mean
    pairwise agreement per item, P_e = sum_j p_j^2 with p_j the share of all ratings in category j.
    With varying numbers of raters per item this is the usual generalisation (each item's agreement
    over its own rater pairs; p_j over all ratings of the items used). NaN if P_e = 1."""
    items = [item for item in ratings if len(item) >= 2]
    if not items:
        return math.nan
    p_bar = percent_agreement(items)
    totals = Counter(itertools.chain.from_iterable(items))
    n_ratings = sum(totals.values())
    p_e = sum((c / n_ratings) ** 2 for c in totals.values())
    return (p_bar - p_e) / (1 - p_e) if p_e < 1 else math.nan


@dataclass
class Agreement:
    """How much labellers agree on the pairs two or more of them labelled."""

    n_items: int          # pairs labelled (not skipped) by >= 2 labellers
    percent: float        # mean pairwise agreement, in %
    fleiss_kappa: float
    cohen_kappa: float | None = None  # when exactly two labellers are compared

    def __str__(self) -> str:
        if not self.n_items:
            return "agreement: no pair was labelled by two labellers"
        cohen = f", Cohen's kappa {self.cohen_kappa:.2f}" if self.cohen_kappa is not None else ""
        return (f"agreement on {self.n_items} pairs labelled by 2+ labellers: {self.percent:.1f}% "
                f"(Fleiss' kappa {self.fleiss_kappa:.2f}{cohen})")


def _choices_by_pair(labels: Iterable[Label]) -> dict[str, dict[str, str]]:
    """pair_id -> {labeller: canonical choice}; skips left out; a labeller's last label of a pair counts."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for label in labels:
        choice = canonical_choice(label)
        if choice is not None:
            out[label.pair_id][label.labeller] = choice
        else:
            out[label.pair_id].pop(label.labeller, None)
    return out


def labeller_agreement(labels: Iterable[Label]) -> Agreement:
    """Agreement between the labellers of a set of labels (several labellers' labels mixed)."""
    by_pair = _choices_by_pair(labels)
    items = [list(votes.values()) for votes in by_pair.values() if len(votes) >= 2]
    labellers = sorted({name for votes in by_pair.values() for name in votes})
    cohen = None
    if len(labellers) == 2:
        both = [v for v in by_pair.values() if len(v) == 2]
        if both:
            cohen = cohen_kappa([v[labellers[0]] for v in both], [v[labellers[1]] for v in both])
    return Agreement(len(items), 100 * percent_agreement(items) if items else math.nan, fleiss_kappa(items), cohen)


def compare_labels(labels_1: Iterable[Label], labels_2: Iterable[Label]) -> Agreement:
    """Agreement between two sets of labels of the same pairs (e.g. a person and an AI judge), matched by
    pair id whatever order each was shown in. Pairs skipped by either side are left out."""
    first = {label.pair_id: canonical_choice(label) for label in labels_1}
    second = {label.pair_id: canonical_choice(label) for label in labels_2}
    common = [i for i in first if i in second and first[i] is not None and second[i] is not None]
    if not common:
        return Agreement(0, math.nan, math.nan, math.nan)
    x, y = [first[i] for i in common], [second[i] for i in common]
    return Agreement(len(common), 100 * sum(a == b for a, b in zip(x, y)) / len(common),
                     fleiss_kappa([[a, b] for a, b in zip(x, y)]), cohen_kappa(x, y))
