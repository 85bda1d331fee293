"""Checks for notebook 8 (beyond PPO and DPO): the KL of best-of-N, GRPO's group-relative advantages,
RLOO's leave-one-out baseline, the win rate, and the refusal rate. Each compares with the package
function that is the exercise's reference (`best_of_n.best_of_n_kl`, `grpo.group_relative_advantages`,
`grpo.rloo_advantages`, `evaluation.win_rate_from_scores`, `evaluation.refusal_rate`) on small inputs
it builds itself - groups of equal rewards, ties within 1e-6, expanded reward tensors - and names the
likely mistake; an input changed in place (rewards normalised through a `.view`) is one."""

from __future__ import annotations

import math

import torch

from rlhf_course import toyworld
from rlhf_course.best_of_n import best_of_n_kl as reference_best_of_n_kl
from rlhf_course.checks.core import CheckFailed, call, check, same_on_layouts
from rlhf_course.evaluation import is_refusal
from rlhf_course.evaluation import refusal_rate as reference_refusal_rate
from rlhf_course.evaluation import win_rate_from_scores as reference_win_rate
from rlhf_course.grpo import group_relative_advantages as reference_grpo
from rlhf_course.grpo import rloo_advantages as reference_rloo


def _near(got, want, atol: float = 1e-5) -> bool:
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    return got.shape == want.shape and bool(torch.isfinite(got).all()) and \
        torch.allclose(got, want, atol=atol, rtol=1e-4)


def _number(got, what: str) -> float:
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise CheckFailed(f"{what} should be one number, got a tensor of shape {tuple(got.shape)}")
        got = got.item()
    if not isinstance(got, (int, float)):
        raise CheckFailed(f"{what} should be a number (a float), got {type(got).__name__}")
    return float(got)


# --------------------------------------------------------------------------------------------- best-of-N

def exact_best_of_n_kl(n: int, m: int = 10_000) -> float:
    """KL(best-of-n || model) for a model with m equally likely answers of distinct rewards: the i-th
    worst answer is the best of n draws with probability (i/m)^n - ((i-1)/m)^n."""
    i = torch.arange(1, m + 1, dtype=torch.float64)
    p = (i / m) ** n - ((i - 1) / m) ** n                                    # (m,)
    p = p[p > 0]
    return float((p * torch.log(p * m)).sum())


@check(reference=reference_best_of_n_kl)
def check_best_of_n_kl(best_of_n_kl):
    """best_of_n_kl(n) -> KL(best-of-n policy || model) in nats."""
    for n in (1, 2, 3, 4, 8, 16, 100):
        got = _number(call(best_of_n_kl, n), f"best_of_n_kl({n})")
        want = reference_best_of_n_kl(n)
        if abs(got - want) < 1e-6:
            continue
        if abs(got - math.log(n)) < 1e-6:
            raise CheckFailed(f"best_of_n_kl({n}) = log n: that is only the upper bound KL <= log n. The exact "
                              f"value subtracts (n-1)/n: log n - (n-1)/n = {want:.4f}")
        if abs(got - (math.log(n) + (n - 1) / n)) < 1e-6:
            raise CheckFailed("the (n-1)/n term has the wrong sign: KL = log n - (n-1)/n")
        if n > 1 and abs(got - (math.log2(n) - (n - 1) / n)) < 1e-6 or abs(got - (math.log10(n) - (n - 1) / n)) < 1e-6:
            raise CheckFailed("use the natural logarithm (math.log): KL is measured in nats here")
        if n > 1 and abs(got - (math.log(n) - n / (n - 1))) < 1e-6:
            raise CheckFailed("the fraction is upside down: (n-1)/n, not n/(n-1)")
        if n == 1:
            raise CheckFailed(f"best_of_n_kl(1) = {got:.4g}: best-of-1 is the model itself, so its KL must be 0")
        raise CheckFailed(f"best_of_n_kl({n}) = {got:.4f}, expected log n - (n-1)/n = {want:.4f}")
    exact = exact_best_of_n_kl(16)
    if abs(exact - reference_best_of_n_kl(16)) > 1e-2:  # the formula itself, against the definition
        raise CheckFailed("internal: the exact KL disagrees with the formula")
    return (f"log n - (n-1)/n; for n=16 it is {reference_best_of_n_kl(16):.3f} nats, and the exact KL over "
            f"10,000 equally likely answers is {exact:.3f}")


# --------------------------------------------------------------------------------------------- GRPO, RLOO

def _rewards(seed: int, n_groups: int, group_size: int, equal_group: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n_groups, group_size, generator=g) + 2.0 * torch.randn(n_groups, 1, generator=g)  # (P, G)
    if equal_group:
        r[-1] = 0.5  # every answer to the last prompt got the same reward: no signal, advantage 0
    return r.view(-1)                                                                                # (P * G,)


def _advantages(fn, rewards: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    got = call(fn, rewards, group_size)
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{name} should return a torch tensor, got {type(got).__name__}")
    if got.shape != rewards.shape:
        raise CheckFailed(f"the advantages have shape {tuple(got.shape)}: return one advantage per answer, shape "
                          f"{tuple(rewards.shape)} (flatten the (prompts, group_size) view back with .view(-1))")
    return got.double()


@check(reference=reference_grpo)
def check_group_relative_advantages(group_relative_advantages):
    """group_relative_advantages(rewards (B,), group_size) -> (B,)."""
    for seed, (n_groups, size) in enumerate(((4, 4), (3, 8), (5, 2))):
        r = _rewards(seed, n_groups, size)
        got = _advantages(group_relative_advantages, r, size, "group_relative_advantages")
        want = reference_grpo(r, size)
        biased = (r.view(-1, size) - r.view(-1, size).mean(1, keepdim=True)) / \
            (r.view(-1, size).std(1, keepdim=True, correction=0) + 1e-4)
        if _near(got, want, 1e-3) or _near(got, biased.view(-1), 1e-3):
            continue
        if not bool(torch.isfinite(got).all()):
            raise CheckFailed("some advantages are NaN or inf: in a group where every answer got the same reward the "
                              "std is 0. Add a small eps to the std (TRL uses 1e-4): that group's advantages are then 0")
        grouped = r.view(-1, size)
        centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
        if _near(got, (r - r.mean()) / r.std(), 1e-3) or _near(got, (r - r.mean()) / (r.std() + 1e-4), 1e-3) or \
                _near(got, (r - r.mean()) / r.std(correction=0), 1e-3):
            raise CheckFailed("you normalised over the whole batch instead of per group: each answer must be compared "
                              "with the other answers to the SAME prompt (rewards.view(-1, group_size))")
        if _near(got, centred, 1e-3):
            raise CheckFailed("you forgot to divide by the group's std: GRPO's advantage is (r - mean) / (std + eps) "
                              "(mean-centring only is Dr. GRPO's variant, TRL's scale_rewards='none')")
        if _near(got, centred / (r.std() + 1e-4), 1e-3) or _near(got, centred / r.std(), 1e-3):
            raise CheckFailed("you divided by the std of the whole batch (TRL's scale_rewards='batch'): here take the "
                              "std within each group, like the mean")
        strided = r.view(size, -1)
        strided = ((strided - strided.mean(0, keepdim=True)) / (strided.std(0, keepdim=True) + 1e-4)).view(-1)
        if _near(got, strided, 1e-3):
            raise CheckFailed("the groups are wrong: a group is `group_size` CONSECUTIVE answers (one prompt's), "
                              "so use rewards.view(-1, group_size) and reduce over dim=1")
        raise CheckFailed(f"on {n_groups} groups of {size} your advantages differ from (r - mean) / (std + 1e-4) per "
                          f"group by up to {(got - want).abs().max().item():.3g}")
    same_on_layouts(group_relative_advantages, [("rewards", _rewards(9, 3, 4)), ("group_size", 4)],
                    expand=("rewards",), atol=1e-3)
    return "(r - mean) / (std + eps) within each group; a group of equal rewards gives 0"


@check(reference=reference_rloo)
def check_rloo_advantages(rloo_advantages):
    """rloo_advantages(rewards (B,), group_size) -> (B,)."""
    for seed, (n_groups, size) in enumerate(((4, 4), (3, 3), (2, 8))):
        r = _rewards(seed + 10, n_groups, size, equal_group=False)
        got = _advantages(rloo_advantages, r, size, "rloo_advantages")
        want = reference_rloo(r, size)
        if _near(got, want):
            continue
        grouped = r.view(-1, size)
        centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
        if _near(got, centred):
            raise CheckFailed("you subtracted the mean of the whole group, r_i included: the baseline must be the mean "
                              "of the OTHER k-1 answers, (sum - r_i) / (k - 1), so r_i does not predict itself")
        if _near(got, (grouped - (grouped.sum(1, keepdim=True) - grouped) / size).view(-1)):
            raise CheckFailed("you divided the sum of the others by k: there are k - 1 other answers")
        if _near(got, r - (r.sum() - r) / (r.numel() - 1)):
            raise CheckFailed("you left one out of the whole batch: the baseline uses only the other answers to the "
                              "SAME prompt (rewards.view(-1, group_size))")
        if _near(got, -want):
            raise CheckFailed("the sign is flipped: the advantage is r_i minus the baseline")
        if _near(got, reference_grpo(r, size), 1e-3):
            raise CheckFailed("that is GRPO's advantage (divided by the std): RLOO only subtracts the leave-one-out mean")
        raise CheckFailed(f"on {n_groups} groups of {size} your advantages differ from r_i - mean(others) by up to "
                          f"{(got - want).abs().max().item():.3g}")
    same_on_layouts(rloo_advantages, [("rewards", _rewards(11, 3, 4, equal_group=False)), ("group_size", 4)],
                    expand=("rewards",))
    return "r_i - mean of the other k-1 rewards of its group (= k/(k-1) times r_i - group mean)"


# --------------------------------------------------------------------------------------------- evaluation

@check(reference=reference_win_rate)
def check_win_rate(win_rate):
    """win_rate(scores_a: list[float], scores_b: list[float]) -> float in [0, 1]."""
    cases = [
        ([1.0, 0.5, 0.2, 0.9], [0.0, 0.5, 0.7, 0.9]),              # win, tie, loss, tie
        ([0.3, 0.3, 1.0, -0.5, 0.25], [0.1, 0.3, 0.75, 0.0, 0.25]),  # win, tie, win, loss, tie
        ([0.1 + 0.2, 0.6], [0.3, 0.2]),                             # 0.1 + 0.2 != 0.3 in floating point: a tie
    ]
    for a, b in cases:
        got = _number(call(win_rate, list(a), list(b)), "the win rate")
        want = reference_win_rate(a, b)
        if abs(got - want) < 1e-9:
            continue
        if (a, b) == cases[-1]:
            raise CheckFailed("0.1 + 0.2 and 0.3 should tie: in floating point they are not exactly equal, "
                              "so treat |a - b| <= 1e-6 as a tie")
        wins = sum(x > y + 1e-6 for x, y in zip(a, b))
        ties = sum(abs(x - y) <= 1e-6 for x, y in zip(a, b))
        if abs(got - wins / len(a)) < 1e-9:
            raise CheckFailed("ties were counted as losses: a tie counts one half (win 1, tie 0.5, loss 0)")
        if abs(got - (wins + ties) / len(a)) < 1e-9:
            raise CheckFailed("ties were counted as wins: a tie counts one half (win 1, tie 0.5, loss 0)")
        if abs(got - (1 - want)) < 1e-9:
            raise CheckFailed("that is b's win rate over a: count the pairs where a scores higher")
        if abs(got - (wins + 0.5 * ties)) < 1e-9:
            raise CheckFailed("return a share (divide by the number of pairs), not a count")
        raise CheckFailed(f"win_rate({a}, {b}) = {got:.3f}, expected {want:.3f} (win 1, tie 0.5, loss 0, averaged)")
    return "wins count 1, ties 1/2 (within 1e-6), averaged over the paired prompts"


def _refusal_cases() -> list[tuple[list, list[str]]]:
    prompts = toyworld.eval_prompts()
    refuse = toyworld.REFUSAL
    benign = [p for p in prompts if not p.harmful]
    harmful = [p for p in prompts if p.harmful]
    # the ideal policy: refuses exactly the harmful prompts
    ideal = [toyworld.best_response(p) for p in prompts]
    # a jumpy one: refuses every third benign prompt (in the middle of an answer too) and one harmful prompt
    mixed_prompts = benign[:9] + harmful[:3]
    mixed = [(toyworld.best_response(p) + " " + refuse[i % 3]) if i % 3 == 0 else toyworld.best_response(p)
             for i, p in enumerate(benign[:9])]
    mixed += [refuse[1], "first , bring a water bottle .", "no , that is not right ."]
    return [(prompts, ideal), (mixed_prompts, mixed), (benign[:4], [refuse[0]] * 4)]


@check(reference=reference_refusal_rate)
def check_refusal_rate(refusal_rate):
    """refusal_rate(prompts: list[Prompt], responses: list[str], harmful: bool = False) -> float."""
    for prompts, responses in _refusal_cases():
        for harmful in (False, True):
            want = reference_refusal_rate(prompts, responses, harmful=harmful)
            try:
                got = call(refusal_rate, list(prompts), list(responses), harmful=harmful)
            except ZeroDivisionError:
                raise CheckFailed(f"with no {'harmful' if harmful else 'benign'} prompt in the list you divided by 0: "
                                  "return math.nan (there is no rate to measure)") from None
            if math.isnan(want):
                if got is None or not math.isnan(_number(got, "the refusal rate")):
                    raise CheckFailed(f"with no {'harmful' if harmful else 'benign'} prompt the rate is undefined: "
                                      f"return math.nan, not {got!r}")
                continue
            got = _number(got, "the refusal rate")
            if abs(got - want) < 1e-9:
                continue
            overall = sum(map(is_refusal, responses)) / len(responses)
            other = reference_refusal_rate(prompts, responses, harmful=not harmful)
            if abs(got - overall) < 1e-9:
                raise CheckFailed("you measured refusals over all prompts: measure them separately among the benign "
                                  "prompts (over-refusal, a failure) and among the harmful ones (the right answer)")
            if not math.isnan(other) and abs(got - other) < 1e-9:
                raise CheckFailed("harmful=True should keep the prompts with p.harmful True, and harmful=False the "
                                  "benign ones: you kept the other kind")
            count = sum(is_refusal(r) for p, r in zip(prompts, responses) if p.harmful == harmful)
            if abs(got - count) < 1e-9:
                raise CheckFailed("return a share (refusals / prompts of that kind), not a count")
            raise CheckFailed(f"refusal rate among the {'harmful' if harmful else 'benign'} prompts: {got:.3f}, "
                              f"expected {want:.3f} (an answer refuses if any of its sentences is a refusal: is_refusal)")
    return "refusals counted among the benign and the harmful prompts separately, NaN when there is none"
