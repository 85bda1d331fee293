"""Checks for notebook 5 (reward modelling): the Bradley-Terry loss, preference accuracy, the Bayes
limit of noisy labels, Llama 2's margin loss, and Llama 2's rule for combining two reward models.
Each compares with the package function that is the exercise's reference, same signature and return
(`reward_model.bradley_terry_loss` -> (loss, accuracy), `reward_model.preference_accuracy`,
`toyworld.bayes_accuracy`, `reward_model.combine_rewards`), on small inputs it builds itself with
several scales and thresholds, ties and pairs ranked wrong by a huge gap, and names the mistake most
students make; an input changed in place is one."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from rlhf_course import toyworld
from rlhf_course.checks.core import CheckFailed, call, check, draws, same_on_layouts
from rlhf_course.reward_model import bradley_terry_loss as reference_bt_loss
from rlhf_course.reward_model import combine_rewards as reference_combine
from rlhf_course.reward_model import preference_accuracy as reference_accuracy


def _pairs(seed: int, n: int = 16, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, generator=g), scale * torch.randn(n, generator=g)


def _loss_and_accuracy(out, what: str) -> torch.Tensor:
    """The package's return, (loss, accuracy): the loss, after checking the pair's shape."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise CheckFailed("return two things, as rm.bradley_terry_loss does: (loss, accuracy)")
    return _scalar(out[0], what)


def _scalar(got, what: str) -> torch.Tensor:
    """A loss must be one number that still carries its gradient."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"return a torch tensor (got {type(got).__name__}): a float (e.g. from `.item()`) "
                          f"has no gradient, so the reward model could not learn from {what}")
    if got.dim() != 0:
        raise CheckFailed(f"the loss has shape {tuple(got.shape)}: take the mean over the pairs, to get one number "
                          f"(shape ())")
    return got


def _near(a, b, atol: float = 1e-5) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and torch.allclose(a, b, atol=atol, rtol=1e-4)


@check(reference=reference_bt_loss)
def check_bradley_terry_loss(bradley_terry_loss):
    """bradley_terry_loss(chosen_rewards (B,), rejected_rewards (B,)) -> (loss (), accuracy ())."""
    for seed, scale in enumerate(draws(0.5, 4.0, 3, seed=12)):
        chosen, rejected = _pairs(seed, scale=scale)
        chosen.requires_grad_(True)
        got = _loss_and_accuracy(call(bradley_terry_loss, chosen, rejected), "it")
        want = reference_bt_loss(chosen.detach(), rejected)[0]
        if _near(got.detach(), want):
            if not got.requires_grad:
                raise CheckFailed("the loss does not carry a gradient: compute it with torch operations on the "
                                  "inputs (no .item(), .detach() or torch.no_grad())")
            continue
        c, r, got = chosen.detach(), rejected, got.detach()
        gap = c - r
        if _near(got, -F.logsigmoid(-gap).mean()):
            raise CheckFailed("the sign of the gap is flipped: the loss must fall as r(x, y_c) - r(x, y_r) grows, "
                              "i.e. -log sigmoid(chosen - rejected), not of rejected - chosen")
        if _near(got, F.logsigmoid(gap).mean()):
            raise CheckFailed("the minus sign is missing: maximising the likelihood means minimising "
                              "-log sigmoid(chosen - rejected)")
        if _near(got, -torch.sigmoid(gap).mean()) or _near(got, 1 - torch.sigmoid(gap).mean()) or \
                _near(got, torch.sigmoid(gap).mean()):
            raise CheckFailed("you used the mean of sigmoid, not of log-sigmoid: the Bradley-Terry loss is the "
                              "negative LOG-likelihood, -mean log sigmoid(chosen - rejected) (use F.logsigmoid)")
        if _near(got, -F.logsigmoid(gap).sum()):
            raise CheckFailed("you summed over the pairs: take the mean, so the loss does not grow with the batch size")
        if _near(got, -torch.log(torch.sigmoid(gap).mean())):
            raise CheckFailed("the mean must be taken of the log-probabilities, not inside the log")
        raise CheckFailed(f"on {len(c)} random pairs your loss is {got.item():.4f}, expected "
                          f"-mean log sigmoid(chosen - rejected) = {want.item():.4f}")
    # a very confident mistake: log(sigmoid(-400)) = log(0) = -inf in float32
    got = _loss_and_accuracy(call(bradley_terry_loss, torch.tensor([-200.0]), torch.tensor([200.0])), "it")
    if not math.isfinite(float(got)):
        raise CheckFailed("a pair ranked wrongly by a large gap (chosen -200, rejected 200) gives an infinite loss: "
                          "log(sigmoid(x)) underflows to log(0) - use F.logsigmoid(x), which is stable")
    if abs(float(got) - 400.0) > 1e-3:
        raise CheckFailed(f"for chosen -200, rejected 200 the loss should be about 400, got {float(got):.4g}")
    chosen, rejected = _pairs(5)
    same_on_layouts(bradley_terry_loss, [("chosen_rewards", chosen), ("rejected_rewards", rejected)],
                    expand=("chosen_rewards",))
    return "-mean log sigmoid(r_c - r_r) at three reward scales, stable for large gaps, with its gradient"


@check(reference=reference_accuracy)
def check_preference_accuracy(preference_accuracy):
    """preference_accuracy(chosen_rewards (B,), rejected_rewards (B,)) -> fraction of pairs ranked right ()."""
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        # whole numbers, so that many pairs tie exactly
        chosen = torch.randint(-2, 3, (40,), generator=g).float()
        rejected = torch.randint(-2, 3, (40,), generator=g).float()
        got = call(preference_accuracy, chosen, rejected)
        got = float(got.item() if isinstance(got, torch.Tensor) else got)
        want = reference_accuracy(chosen, rejected).item()
        if abs(got - want) < 1e-6:
            continue
        wins, ties = (chosen > rejected).float(), (chosen == rejected).float()
        if abs(got - wins.mean().item()) < 1e-6:
            raise CheckFailed("ties count as wrong here: a tie is a coin flip, right half of the time, so count it 1/2 "
                              "(TRL's logged accuracy counts it as wrong, which is why ours can differ)")
        if abs(got - (wins + ties).mean().item()) < 1e-6:
            raise CheckFailed("ties count as right here: a reward model that gives both answers the same reward has "
                              "not ranked them; count a tie 1/2")
        if abs(got - (1 - want)) < 1e-6:
            raise CheckFailed("chosen and rejected are swapped: a pair is ranked right when chosen > rejected")
        if abs(got - (wins + 0.5 * ties).sum().item()) < 1e-6:
            raise CheckFailed("you returned a count: divide by the number of pairs to get a fraction")
        raise CheckFailed(f"on {len(chosen)} pairs (some tied) you give {got:.4f}, expected {want:.4f}")
    same_on_layouts(preference_accuracy, [("chosen_rewards", chosen), ("rejected_rewards", rejected)],
                    expand=("chosen_rewards",))
    return "fraction of pairs with chosen > rejected, a tie counting 1/2"


@check(reference=toyworld.bayes_accuracy)
def check_bayes_accuracy(bayes_accuracy):
    """bayes_accuracy(p_chosen: list[float]) -> the best accuracy any model can reach on these labels."""
    rng = random.Random(0)
    for _ in range(3):
        # p_chosen is the probability of the label that was drawn: below 0.5 when the labeller chose the worse answer
        ps = [rng.random() for _ in range(50)] + [0.5, 1.0, 0.0]
        got = float(call(bayes_accuracy, list(ps)))
        want = toyworld.bayes_accuracy(ps)
        if abs(got - want) < 1e-6:
            continue
        if abs(got - 1.0) < 1e-9:
            raise CheckFailed("100% is impossible: each label is a random draw, so even the true utilities predict "
                              "a label only with probability max(p, 1 - p)")
        if abs(got - sum(ps) / len(ps)) < 1e-6:
            raise CheckFailed("you averaged p_chosen: that is how often a second, equally noisy labeller would agree "
                              "with the label. The best model predicts the more likely answer, right with "
                              "probability max(p, 1 - p)")
        if abs(got - sum(min(p, 1 - p) for p in ps) / len(ps)) < 1e-6:
            raise CheckFailed("you took min(p, 1 - p): that is the error rate of the best model, not its accuracy")
        if abs(got - sum(p > 0.5 for p in ps) / len(ps)) < 1e-6:
            raise CheckFailed("you counted the labels that went the likely way: a label is a random draw, so average "
                              "the probability max(p, 1 - p) of being right, not a 0/1 outcome")
        raise CheckFailed(f"on 53 probabilities you give {got:.4f}, expected mean of max(p, 1 - p) = {want:.4f}")
    rows = toyworld.make_preference_pairs(200, seed=0)
    got = float(call(bayes_accuracy, [r["p_chosen"] for r in rows]))
    want = toyworld.bayes_accuracy(r["p_chosen"] for r in rows)
    if abs(got - want) > 1e-6:
        raise CheckFailed(f"on 200 toy-world pairs you give {got:.4f}, toyworld.bayes_accuracy gives {want:.4f}")
    return f"mean of max(p, 1 - p); 200 toy-world pairs: Bayes limit {want:.2f}"


@check(reference=reference_bt_loss)
def check_margin_loss(margin_loss):
    """margin_loss(chosen_rewards (B,), rejected_rewards (B,), margin (B,)) -> (loss (), accuracy ())."""
    for seed, top in enumerate(draws(1.5, 4.0, 3, seed=13)):
        chosen, rejected = _pairs(seed, scale=1.5)
        margin = torch.tensor([0.0, top / 3, 2 * top / 3, top] * 4)[
            torch.randperm(16, generator=torch.Generator().manual_seed(seed))]
        chosen.requires_grad_(True)
        got = _loss_and_accuracy(call(margin_loss, chosen, rejected, margin), "the margin")
        c = chosen.detach()
        want = reference_bt_loss(c, rejected, margin)[0]
        if _near(got.detach(), want):
            if not got.requires_grad:
                raise CheckFailed("the loss does not carry a gradient: compute it with torch operations on the inputs")
            continue
        got = got.detach()
        gap = c - rejected
        if _near(got, reference_bt_loss(c, rejected)[0]):
            raise CheckFailed("you forgot the margin: your loss equals the plain Bradley-Terry loss. Subtract m(r) "
                              "from the gap inside the log-sigmoid: -log sigmoid(r_c - r_r - m)")
        if _near(got, -F.logsigmoid(gap + margin).mean()):
            raise CheckFailed("the margin is added to the gap: subtract it, so the chosen reward must beat the "
                              "rejected one BY the margin before the loss gets small")
        if _near(got, -F.logsigmoid(gap).mean() + margin.mean()) or _near(got, -F.logsigmoid(gap).mean() - margin.mean()):
            raise CheckFailed("the margin sits outside the log-sigmoid, where it is a constant with no effect on "
                              "training: put it inside, -log sigmoid(r_c - r_r - m)")
        if _near(got, -F.logsigmoid(gap - margin.mean()).mean()):
            raise CheckFailed("you used one margin for the whole batch: each pair has its own margin m(r) "
                              "(from its own rating)")
        if _near(got, -F.logsigmoid(-gap + margin).mean()) or _near(got, -F.logsigmoid(-gap - margin).mean()):
            raise CheckFailed("the sign of the gap is flipped: the loss must fall as chosen - rejected grows")
        raise CheckFailed(f"your loss is {got.item():.4f}, expected -mean log sigmoid(chosen - rejected - margin) "
                          f"= {want.item():.4f}")
    # a margin of zero is the plain Bradley-Terry loss
    chosen, rejected = _pairs(7)
    got = _loss_and_accuracy(call(margin_loss, chosen, rejected, torch.zeros(16)), "the margin")
    if not _near(got.detach(), reference_bt_loss(chosen, rejected)[0]):
        raise CheckFailed("with every margin 0 the loss should be exactly the Bradley-Terry loss")
    # ranked wrong by a huge gap, plus a margin: log(sigmoid(-403)) underflows to log(0)
    got = _loss_and_accuracy(call(margin_loss, torch.tensor([-200.0]), torch.tensor([200.0]), torch.tensor([3.0])),
                             "the margin")
    if not math.isfinite(float(got)) or abs(float(got) - 403.0) > 1e-3:
        raise CheckFailed(f"for chosen -200, rejected 200 and a margin of 3 the loss should be about 403, got "
                          f"{float(got):.4g}: log(sigmoid(x)) underflows to log(0) - use F.logsigmoid(x)")
    return "-mean log sigmoid(r_c - r_r - m), a margin per pair (Llama 2, Eq. 2), stable for large gaps"


def _combine_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Helpful / harmless logits and unsafe flags that exercise every branch of the rule."""
    g = torch.Generator().manual_seed(seed)
    n = 24
    helpful = 2 * torch.randn(n, generator=g)
    harmless = 3 * torch.randn(n, generator=g)   # sigmoid(R_s) < 0.15 for about a third of them
    unsafe = torch.rand(n, generator=g) < 0.3
    # every branch of the rule, whatever the draw: flagged and unsafe-looking, only unsafe-looking, only flagged
    harmless[:3] = torch.tensor([-4.0, -4.0, 3.0])
    unsafe[:3] = torch.tensor([True, False, True])
    return helpful, harmless, unsafe


@check(reference=reference_combine)
def check_combine_rewards(combine_rewards):
    """combine_rewards(helpful (N,), harmless (N,), *, unsafe (N,) bool, safety_threshold, whiten_rewards) -> (N,)."""
    thresholds = [0.15] + draws(0.05, 0.45, 2, seed=14, avoid=(0.15, 0.5))
    for seed, threshold in enumerate(thresholds):
        helpful, harmless, unsafe = _combine_inputs(seed)
        got = call(combine_rewards, helpful, harmless, unsafe=unsafe, safety_threshold=threshold, whiten_rewards=False)
        if not isinstance(got, torch.Tensor) or got.shape != helpful.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"return one combined reward per answer: a tensor of shape {tuple(helpful.shape)}, "
                              f"got {shape}")
        want = reference_combine(helpful, harmless, unsafe=unsafe, safety_threshold=threshold, whiten_rewards=False)
        if _near(got, want):
            continue
        got = got.detach().double()
        sig = torch.sigmoid(harmless)

        def rule(use_safety):
            return torch.where(use_safety, harmless, helpful)

        if _near(got, helpful):
            raise CheckFailed("you returned the helpfulness reward everywhere: on flagged prompts, and where "
                              "sigmoid(R_s) < threshold, only safety counts")
        if _near(got, rule(unsafe)):
            raise CheckFailed("only the unsafe flag switches to safety: also switch when the safety model is fairly "
                              "sure the answer is unsafe, sigmoid(R_s) < safety_threshold")
        if _near(got, rule(sig < threshold)):
            raise CheckFailed("the unsafe flag is ignored: on a prompt flagged unsafe only safety counts, "
                              "whatever sigmoid(R_s) says")
        if _near(got, rule(unsafe | (harmless < threshold))):
            raise CheckFailed("the threshold applies to sigmoid(R_s), a probability, not to the raw reward R_s")
        if _near(got, rule(unsafe | (sig > threshold))) or _near(got, rule(unsafe | (sig >= threshold))):
            raise CheckFailed("the comparison is reversed: switch to safety when sigmoid(R_s) is BELOW the threshold "
                              "(the answer is probably unsafe)")
        if _near(got, rule(unsafe & (sig < threshold))):
            raise CheckFailed("you required both conditions: either one (a flagged prompt OR sigmoid(R_s) < threshold) "
                              "is enough for safety to decide")
        if _near(got, torch.where(unsafe | (sig < threshold), helpful, harmless)):
            raise CheckFailed("the two rewards are swapped: use R_s (harmless) where safety decides, R_h elsewhere")
        if _near(got, reference_combine(helpful, harmless, unsafe=unsafe, safety_threshold=threshold)):
            raise CheckFailed("with whiten_rewards=False return R_c as it is: whiten only when whiten_rewards is True")
        if _near(got, (helpful + harmless) / 2) or _near(got, helpful + harmless):
            raise CheckFailed("that is a (weighted) sum: Llama 2's rule picks ONE of the two rewards per answer")
        raise CheckFailed(f"your combined rewards differ from Llama 2's rule (threshold {threshold}) on "
                          f"{int((~torch.isclose(got, want.double())).sum())} of {len(helpful)} answers")
    helpful, harmless, unsafe = _combine_inputs(3)
    got = call(combine_rewards, helpful, harmless, unsafe=None)
    if not _near(got, reference_combine(helpful, harmless)):
        if _near(got, reference_combine(helpful, harmless, whiten_rewards=False)):
            raise CheckFailed("with whiten_rewards=True (the default) the combined reward is whitened over the batch: "
                              "return whiten(R_c)")
        raise CheckFailed("without unsafe flags (unsafe=None) only the safety model's threshold decides, and the "
                          "result is whitened (the defaults)")
    return (f"R_s where the prompt is unsafe or sigmoid(R_s) < threshold, else R_h (Llama 2, Sec. 3.2.3), thresholds "
            f"{', '.join(map(str, thresholds))}; without flags, and whitened")
