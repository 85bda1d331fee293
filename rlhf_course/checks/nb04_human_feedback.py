"""Checks for notebook 4 (human feedback): the Bradley-Terry labeller, labels -> preference records,
Cohen's kappa, and the majority vote of a class's labels. Each compares with `rlhf_course.labelling`
or `rlhf_course.toyworld` on small inputs it builds itself."""

from __future__ import annotations

import math
import random

from rlhf_course import labelling, toyworld
from rlhf_course.checks.core import CheckFailed, check


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@check
def check_bt_probability(bt_probability):
    """bt_probability(u_a, u_b, temperature) -> P(a is preferred to b)."""
    rng = random.Random(0)
    if abs(float(bt_probability(0.7, 0.7, 0.1)) - 0.5) > 1e-9:
        raise CheckFailed("two answers with the same utility should be preferred half of the time (P = 0.5)")
    for _ in range(30):
        u_a, u_b = rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)
        t = rng.choice([0.05, 0.1, 0.3, 2.0])
        got, want = float(bt_probability(u_a, u_b, t)), _sigmoid((u_a - u_b) / t)
        if abs(got - want) < 1e-6:
            continue
        if abs(got - _sigmoid((u_b - u_a) / t)) < 1e-6:
            raise CheckFailed("the sign is reversed: P(a is preferred) must grow with u_a - u_b")
        if abs(got - _sigmoid(u_a - u_b)) < 1e-6:
            raise CheckFailed("the temperature is missing: divide the utility gap by it, sigmoid((u_a - u_b) / T)")
        if abs(got - _sigmoid((u_a - u_b) * t)) < 1e-6:
            raise CheckFailed("you multiplied by the temperature: divide the gap by it (a small T = a sharp labeller)")
        raise CheckFailed(f"bt_probability({u_a:.2f}, {u_b:.2f}, {t}) = {got:.4f}, expected sigmoid((u_a - u_b) / T) "
                          f"= {want:.4f}")
    # the same as the toy world's labeller on real answers
    labeller = toyworld.Labeller(temperature=0.1)
    prompt = toyworld.train_prompts()[0]
    a, b = toyworld.best_response(prompt), toyworld.join_sentences([toyworld.FILLER[0]])
    want = labeller.prob_prefers(prompt, a, b)
    got = float(bt_probability(labeller.utility(prompt, a), labeller.utility(prompt, b), 0.1))
    if abs(got - want) > 1e-6:
        raise CheckFailed(f"on a toy-world pair you give {got:.4f}, toyworld.Labeller gives {want:.4f}")
    return "P = sigmoid((u_a - u_b) / T), as toyworld.Labeller draws its labels"


def _labels(n: int = 16, seed: int = 0) -> list[labelling.Label]:
    """Toy-world labels with every decision, and some "much better" ones."""
    rng = random.Random(seed)
    prompts = toyworld.train_prompts()
    out = []
    decisions = ["a", "b", "tie", "skip"] * (n // 4)
    rng.shuffle(decisions)
    for decision in decisions:
        p = rng.choice(prompts)
        a = toyworld.sample_response(p, rng, "base")
        b = toyworld.sample_response(p, rng, "demo")
        if a == b:
            b = toyworld.best_response(p) if a != toyworld.best_response(p) else toyworld.join_sentences([toyworld.RUDE[0]])
        much = decision in ("a", "b") and rng.random() < 0.5
        out.append(labelling.Label(labelling.pair_id(p.text, a, b), p.text, a, b, decision, much, "check"))
    return out


@check
def check_labels_to_records(labels_to_records):
    """labels_to_records(labels, much_better_margin) -> conversational preference records."""
    labels = _labels()
    margin = 2.5
    got = list(labels_to_records(labels, margin))
    want = labelling.labels_to_preferences(labels, much_better_margin=margin)
    keys = ("prompt", "chosen", "rejected", "margin")
    n_pref = sum(label.decision in ("a", "b") for label in labels)
    if len(got) == len(labels):
        raise CheckFailed("ties and skips must be dropped: they say nothing about which answer is better")
    if len(got) != len(want):
        raise CheckFailed(f"expected {n_pref} records (one per 'a' or 'b' label), got {len(got)}")
    for record, expected, label in zip(got, want, [l for l in labels if l.decision in ("a", "b")]):
        missing = [k for k in keys if k not in record]
        if missing:
            raise CheckFailed(f"a record needs the fields {', '.join(keys)}; missing: {', '.join(missing)}")
        if isinstance(record["prompt"], str) or isinstance(record["chosen"], str):
            raise CheckFailed('make conversational records: prompt = [{"role": "user", "content": ...}], '
                              'chosen/rejected = [{"role": "assistant", "content": ...}]')
        if record["chosen"] == expected["rejected"] and label.decision == "b":
            raise CheckFailed("for a 'b' decision, answer B is chosen and answer A rejected (you kept A as chosen)")
        if record["chosen"] == expected["rejected"]:
            raise CheckFailed("chosen and rejected are swapped: decision 'a' means answer A is chosen")
        if (record["prompt"], record["chosen"], record["rejected"]) != (expected["prompt"], expected["chosen"], expected["rejected"]):
            raise CheckFailed(f"record for {label.decision!r} differs from the reference: "
                              f"got chosen={record['chosen']!r}, expected {expected['chosen']!r}")
        if not math.isclose(float(record["margin"]), expected["margin"]):
            raise CheckFailed(f"margin should be {expected['margin']} for much_better={label.much_better} "
                              f"(much_better_margin if much better, else 0), got {record['margin']}")
    from rlhf_course.preferences import validate_records

    report = validate_records(got)
    if not report.ok:
        raise CheckFailed(f"the records do not pass validation: {report.problems[0]}")
    return f"{len(got)} records from {len(labels)} labels (ties and skips dropped), margins right, valid"


@check
def check_cohen_kappa(cohen_kappa):
    """cohen_kappa(ratings_1, ratings_2) -> kappa."""
    # Wikipedia's example: p_o = 0.7, p_e = 0.5 -> 0.4
    r1 = ["yes"] * 25 + ["no"] * 25
    r2 = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    got = float(cohen_kappa(r1, r2))
    if abs(got - 0.7) < 1e-9:
        raise CheckFailed("you returned the observed agreement p_o; kappa = (p_o - p_e) / (1 - p_e) removes chance agreement")
    if abs(got - 0.4) > 1e-6:
        raise CheckFailed(f"on Wikipedia's example (p_o = 0.7, p_e = 0.5) kappa is 0.4, you give {got:.4f}")
    rng = random.Random(1)
    for _ in range(20):
        n, cats = rng.randint(5, 40), ["a", "b", "tie"][: rng.randint(2, 3)]
        x = [rng.choice(cats) for _ in range(n)]
        # a rater with a strong preference for one label: chance agreement must use each rater's own rates
        y = [xi if rng.random() < 0.6 else rng.choices(cats, [0.7] + [0.3 / (len(cats) - 1)] * (len(cats) - 1))[0] for xi in x]
        want = labelling.cohen_kappa(x, y)
        if math.isnan(want):
            continue
        got = float(cohen_kappa(x, y))
        if abs(got - want) > 1e-6:
            p_o = sum(a == b for a, b in zip(x, y)) / n
            uniform = 1 / len(set(x) | set(y))
            if abs(got - (p_o - uniform) / (1 - uniform)) < 1e-6:
                raise CheckFailed("p_e is not 1 / (number of labels): it is sum over labels of p_1(label) * p_2(label), "
                                  "each rater's own rate of giving that label")
            raise CheckFailed(f"kappa differs from the reference ({got:.4f} vs {want:.4f}) on {n} random ratings")
    return "(p_o - p_e) / (1 - p_e), with chance agreement from each rater's own label rates"


@check
def check_majority(majority):
    """majority(votes) -> the answer with the most votes, or None on an even split."""
    cases = [(["x"], "x"), (["x", "y", "x"], "x"), (["y", "y", "x", "x", "y"], "y"), (["x", "y"], None),
             (["x", "x", "y", "y", "z"], None), (["z", "x", "y"], None), ([], None)]
    for votes, want in cases:
        got = majority(list(votes))
        if got == want:
            continue
        if want is None and votes:
            raise CheckFailed(f"majority({votes}) should be None: the top answers tie, so there is no majority "
                              f"(you returned {got!r})")
        if want is None:
            raise CheckFailed("majority([]) should be None: no votes, no winner")
        raise CheckFailed(f"majority({votes}) should be {want!r}, got {got!r}")
    rng = random.Random(2)
    for _ in range(50):
        votes = [rng.choice("xyz") for _ in range(rng.randint(1, 9))]
        if majority(list(votes)) != labelling.majority(votes):
            raise CheckFailed(f"majority({votes}) = {majority(list(votes))!r}, expected {labelling.majority(votes)!r}")
    return "the most-voted answer; None when the top two tie"
