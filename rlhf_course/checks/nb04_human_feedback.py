"""Checks for notebook 4 (human feedback): the Bradley-Terry labeller, labels -> preference records,
Cohen's kappa, and the majority vote of a class's labels. Each compares with `rlhf_course.feedback`
(`bradley_terry`, `labels_to_preferences`, `cohen_kappa`, `majority`: the references the notebook falls
back on) or `rlhf_course.toyworld` on small inputs it builds itself, extreme gaps and undefined kappas
included; an input list changed in place is a mistake too."""

from __future__ import annotations

import math
import random

from rlhf_course import feedback, toyworld
from rlhf_course.checks.core import CheckFailed, call, check, draws


def labels_to_records_reference(labels, much_better_margin=1.0):
    """Exercise 4.1's reference: `feedback.labels_to_preferences` (which also keeps each pair's id)."""
    return feedback.labels_to_preferences(labels, much_better_margin=much_better_margin)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@check(reference=feedback.bradley_terry)
def check_bradley_terry(bradley_terry):
    """bradley_terry(u_a, u_b, temperature) -> P(a is preferred to b)."""
    rng = random.Random(0)
    if abs(float(call(bradley_terry, 0.7, 0.7, 0.1)) - 0.5) > 1e-9:
        raise CheckFailed("two answers with the same utility should be preferred half of the time (P = 0.5)")
    for t in draws(0.05, 2.0, 6, seed=10, avoid=(1.0,)):
        u_a, u_b = rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)
        got, want = float(call(bradley_terry, u_a, u_b, t)), _sigmoid((u_a - u_b) / t)
        if abs(got - want) < 1e-6:
            continue
        if abs(got - _sigmoid((u_b - u_a) / t)) < 1e-6:
            raise CheckFailed("the sign is reversed: P(a is preferred) must grow with u_a - u_b")
        if abs(got - _sigmoid(u_a - u_b)) < 1e-6:
            raise CheckFailed("the temperature is missing: divide the utility gap by it, sigmoid((u_a - u_b) / T)")
        if abs(got - _sigmoid((u_a - u_b) * t)) < 1e-6:
            raise CheckFailed("you multiplied by the temperature: divide the gap by it (a small T = a sharp labeller)")
        raise CheckFailed(f"bradley_terry({u_a:.2f}, {u_b:.2f}, {t}) = {got:.4f}, expected sigmoid((u_a - u_b) / T) "
                          f"= {want:.4f}")
    # a near-deterministic labeller (notebook 4 uses T = 0.001): the gap is thousands of temperatures
    for u_a, u_b in ((2.0, -1.0), (-1.0, 2.0)):
        try:
            got = float(call(bradley_terry, u_a, u_b, 1e-3))
        except OverflowError:
            raise CheckFailed("math.exp overflowed for a gap of 3000 temperatures (a near-deterministic labeller): "
                              "exp(-z) is too large when z is very negative - compute the sigmoid without it there "
                              "(exp(z) / (1 + exp(z)) for z < 0, or 0.5 * (1 + tanh(z / 2)))") from None
        if abs(got - (1.0 if u_a > u_b else 0.0)) > 1e-9:
            raise CheckFailed(f"bradley_terry({u_a}, {u_b}, 0.001) = {got}: a gap of 3000 temperatures should give "
                              f"{1.0 if u_a > u_b else 0.0} (to the last digit)")
    # the same as the toy world's labeller on real answers
    labeller = toyworld.Labeller(temperature=0.1)
    prompt = toyworld.train_prompts()[0]
    a, b = toyworld.best_response(prompt), toyworld.join_sentences([toyworld.FILLER[0]])
    want = labeller.prob_prefers(prompt, a, b)
    got = float(call(bradley_terry, labeller.utility(prompt, a), labeller.utility(prompt, b), 0.1))
    if abs(got - want) > 1e-6:
        raise CheckFailed(f"on a toy-world pair you give {got:.4f}, toyworld.Labeller gives {want:.4f}")
    return "P = sigmoid((u_a - u_b) / T) for six temperatures, without overflow at T = 0.001, as toyworld.Labeller draws"


def _labels(n: int = 16, seed: int = 0) -> list[feedback.Label]:
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
        out.append(feedback.Label(feedback.pair_id(p.text, a, b), p.text, a, b, decision, much, "check"))
    return out


@check(reference=labels_to_records_reference)
def check_labels_to_records(labels_to_records):
    """labels_to_records(labels, much_better_margin) -> conversational preference records."""
    for seed, margin in zip((0, 1), draws(0.5, 4.0, 2, seed=11, avoid=(1.0,))):
        got = _records_case(labels_to_records, _labels(seed=seed), margin)
    from rlhf_course.preferences import validate_records

    report = validate_records(got)
    if not report.ok:
        raise CheckFailed(f"the records do not pass validation: {report.problems[0]}")
    return f"{len(got)} records from 16 labels (ties and skips dropped), margins right, valid"


def _records_case(labels_to_records, labels, margin):
    got = list(call(labels_to_records, labels, margin))
    want = feedback.labels_to_preferences(labels, much_better_margin=margin)
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
                              f"(much_better_margin = {margin} if much better, else 0), got {record['margin']}")
    return got


@check(reference=feedback.cohen_kappa)
def check_cohen_kappa(cohen_kappa):
    """cohen_kappa(ratings_1, ratings_2) -> kappa."""
    # Wikipedia's example: p_o = 0.7, p_e = 0.5 -> 0.4
    r1 = ["yes"] * 25 + ["no"] * 25
    r2 = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    got = float(call(cohen_kappa, r1, r2))
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
        want = feedback.cohen_kappa(x, y)
        if math.isnan(want):
            continue
        got = float(call(cohen_kappa, x, y))
        if abs(got - want) > 1e-6:
            p_o = sum(a == b for a, b in zip(x, y)) / n
            uniform = 1 / len(set(x) | set(y))
            if abs(got - (p_o - uniform) / (1 - uniform)) < 1e-6:
                raise CheckFailed("p_e is not 1 / (number of labels): it is sum over labels of p_1(label) * p_2(label), "
                                  "each rater's own rate of giving that label")
            raise CheckFailed(f"kappa differs from the reference ({got:.4f} vs {want:.4f}) on {n} random ratings")
    # both raters always gave the one same label: p_e = 1 and kappa = 0 / 0, undefined
    try:
        got = call(cohen_kappa, ["a"] * 6, ["a"] * 6)
    except ZeroDivisionError:
        raise CheckFailed("when both raters always give the same single label, p_e = 1 and kappa = 0 / 0: "
                          "return math.nan there (agreement beyond chance is undefined), not a division by zero") \
            from None
    if not (isinstance(got, float) and math.isnan(got)):
        raise CheckFailed(f"when both raters always give the same single label kappa is undefined (0 / 0): "
                          f"return math.nan, not {got!r}")
    return "(p_o - p_e) / (1 - p_e), with chance agreement from each rater's own label rates; NaN when undefined"


@check(reference=feedback.majority)
def check_majority(majority):
    """majority(votes) -> the answer with the most votes, or None on an even split."""
    cases = [(["x"], "x"), (["x", "y", "x"], "x"), (["y", "y", "x", "x", "y"], "y"), (["x", "y"], None),
             (["x", "x", "y", "y", "z"], None), (["z", "x", "y"], None), ([], None)]
    for votes, want in cases:
        got = call(majority, list(votes))
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
        got = call(majority, list(votes))
        if got != feedback.majority(votes):
            raise CheckFailed(f"majority({votes}) = {got!r}, expected {feedback.majority(votes)!r}")
    return "the most-voted answer; None when the top two tie"
