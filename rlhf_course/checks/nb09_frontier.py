"""Checks for notebook 9 (the frontier): fitting Gao et al.'s best-of-n form, an ensemble of reward
models (mean and worst case), the verifiable "steps in order" reward, and the SimPO loss. Each compares
with the package (`overoptimization`, `grpo_variants`, `dpo_family`) on inputs it builds itself, checks
that the inputs come back unchanged, and names the likely mistake."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlhf_course import toyworld
from rlhf_course.checks.core import CheckFailed, check, name_the_mistake, same
from rlhf_course.dpo_family import simpo_loss as reference_simpo_loss
from rlhf_course.grpo_variants import steps_in_order as reference_steps_in_order
from rlhf_course.overoptimization import ensemble_reward as reference_ensemble_reward
from rlhf_course.overoptimization import fit_best_of_n as reference_fit_best_of_n


def _pair(got, what: str) -> tuple[float, float]:
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise CheckFailed(f"{what} should return two numbers, (alpha, beta)")
    return tuple(float(x.item() if isinstance(x, torch.Tensor) else x) for x in got)


# --- Exercise 9.1 ----------------------------------------------------------------------------------------

def _lstsq(columns: list[list[float]], target: list[float]) -> list[float]:
    a = torch.tensor(columns, dtype=torch.float64).T
    return torch.linalg.lstsq(a, torch.tensor(target, dtype=torch.float64).unsqueeze(1)).solution.squeeze(1).tolist()


@check(reference=reference_fit_best_of_n)
def check_fit_best_of_n(fit_best_of_n):
    """fit_best_of_n(d, gain) -> (alpha, beta), least squares of gain = d (alpha - beta d)."""
    g = torch.Generator().manual_seed(9)
    for alpha, beta in ((0.4, 0.15), (0.25, 0.05), (0.6, 0.4)):
        d = [0.0] + sorted((torch.rand(7, generator=g) * 2.5 + 0.1).tolist())
        gain = [x * (alpha - beta * x) + 0.01 * e for x, e in zip(d, torch.randn(8, generator=g).tolist())]
        d_in, gain_in = list(d), list(gain)
        got = _pair(fit_best_of_n(d_in, gain_in), "fit_best_of_n")
        if d_in != d or gain_in != gain:
            raise CheckFailed("the inputs were changed: compute on copies (or tensors made from them)")
        want = reference_fit_best_of_n(d, gain)
        if all(abs(a - b) < 1e-5 for a, b in zip(got, want)):
            continue
        wrong = {
            "beta_sign": (want[0], -want[1]),
            "swapped": (want[1], want[0]),
            "intercept": tuple(_lstsq([[1.0] * len(d), d, [-x * x for x in d]], gain)[1:]),
            "kl": tuple(_lstsq([[x * x for x in d], [-(x * x) ** 2 for x in d]], gain)),
            "rl_form": tuple(_lstsq([d, [-x * math.log(x) if x > 0 else 0.0 for x in d]], gain)),
        }
        messages = {
            "beta_sign": "beta has the wrong sign: the form is d (alpha - beta d) = alpha d - beta d^2, so the second "
                         "feature is -d^2 (or fit +d^2 and negate its coefficient)",
            "swapped": "alpha and beta are swapped: return (coefficient of d, beta)",
            "intercept": "the fit has an intercept: the gain is 0 at d = 0 by definition, so fit through the origin "
                         "with the two features d and -d^2 only",
            "kl": "you fitted against the KL itself: Gao et al.'s x-axis is d = sqrt(KL), and `d` already is it",
            "rl_form": "that is the RL form d (alpha - beta log d); best-of-n's is d (alpha - beta d)",
        }
        for key, value in wrong.items():
            if all(abs(a - b) < 1e-5 for a, b in zip(got, value)):
                raise CheckFailed(messages[key])
        raise CheckFailed(f"(alpha, beta) = ({got[0]:.4f}, {got[1]:.4f}), expected ({want[0]:.4f}, {want[1]:.4f}): "
                          "least squares of gain on the features d and -d^2, no intercept")
    return "least squares of d (alpha - beta d) through the origin, on three noisy curves"


# --- Exercise 9.2 ----------------------------------------------------------------------------------------

@check(reference=reference_ensemble_reward)
def check_ensemble_reward(ensemble_reward):
    """ensemble_reward(scores (k, N), aggregate) -> (N,): standardise each member over the N answers, then
    the mean or the minimum over the members."""
    g = torch.Generator().manual_seed(2)
    # members on different scales and offsets, as independently trained reward models are
    scores = torch.randn(3, 6, generator=g) * torch.tensor([[1.0], [5.0], [0.3]]) + torch.tensor([[0.0], [4.0], [-2.0]])
    for aggregate, layout in (("mean", "contiguous"), ("worst", "contiguous"), ("mean", "transposed view")):
        x = scores.clone() if layout == "contiguous" else scores.T.contiguous().T  # the same values, non-contiguous
        got = ensemble_reward(x, aggregate)
        if not torch.equal(x, scores):
            raise CheckFailed(f"the scores ({layout}) were changed in place: standardise a copy "
                              "(scores - mean, not scores -= mean)")
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (6,):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"return one combined score per answer, shape (N,) = (6,); got {shape}")
        want = reference_ensemble_reward(scores, aggregate)
        z = (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True)
        z_pop = (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True, unbiased=False)
        z_members = (scores - scores.mean(0, keepdim=True)) / scores.std(0, keepdim=True)
        pick = (lambda t: t.mean(0)) if aggregate == "mean" else (lambda t: t.min(0).values)
        wrong = {
            "raw": pick(scores),
            "dim": pick(z_members),
            "max": z.max(0).values,
            "mean_not_min": z.mean(0) if aggregate == "worst" else z.min(0).values,
            "centre_only": pick(scores - scores.mean(1, keepdim=True)),
            "population": pick(z_pop),
        }
        messages = {
            "raw": "the members were not put on one scale: each reward model's scores have their own offset and "
                   "spread, so standardise each member (mean 0, std 1 over the N answers) before combining",
            "dim": "you standardised across the members (dim 0): standardise each member over its N answers (dim 1)",
            "max": "the worst case is the LOWEST member's score (min over dim 0), not the highest",
            "mean_not_min": "the two aggregates are swapped: 'mean' averages the members, 'worst' takes their minimum",
            "centre_only": "subtracting each member's mean is not enough: divide by its std too, or the member with "
                           "the widest spread decides alone",
            "population": "use the sample standard deviation (torch's default, unbiased=True), as the package does",
        }
        name_the_mistake(got, want, wrong, messages, what=f"ensemble_reward(scores, {aggregate!r})", atol=1e-4)
    return "each member standardised over the answers, then the mean or the worst case (Coste et al. 2023)"


# --- Exercise 9.3 ----------------------------------------------------------------------------------------

def _steps_cases() -> list[tuple[str, toyworld.Prompt, str, bool, str]]:
    """(name, prompt, response, the right verdict, the mistake a wrong verdict on this case reveals)."""
    rice = next(p for p in toyworld.eval_prompts() if p.task == "cook rice" and p.claim is None)
    t = toyworld.TIPS["cook rice"]
    j = toyworld.join_sentences
    return [
        ("three in order", rice, j([t[0], t[1], t[2]]), True, "three of the task's steps in order pass the check"),
        ("all five", rice, j(list(t)), True, "all five steps in order pass the check"),
        ("gaps are fine", rice, j([t[0], t[2], t[4]]), True,
         "steps 1, 3 and 5 are in order: a step may be left out, only the order matters"),
        ("out of order", rice, j([t[1], t[0], t[2]]), False, "the steps must come in the order TIPS lists them"),
        ("two only", rice, j([t[0], t[1]]), False, "at least three steps are needed (min_steps)"),
        ("filler", rice, j([t[0], t[1], t[2], toyworld.FILLER[0]]), False,
         "every sentence must be one of the task's steps: filler fails the check"),
        ("off topic", rice, j([t[0], toyworld.TIPS["bake bread"][1], t[2], t[3]]), False,
         "a step of another task fails the check: only this task's own tips count"),
        ("repeat", rice, j([t[0], t[1], t[1], t[2]]), False,
         "a repeated step fails the check: the order must be strictly increasing"),
        ("not ended", rice, j([t[0], t[1], t[2]]), False, "an answer cut at the length limit (ended=False) fails"),
        ("empty", rice, "", False, "an empty answer fails the check"),
    ]


@check(reference=reference_steps_in_order)
def check_steps_in_order(steps_in_order):
    """steps_in_order(prompt, response, ended) -> bool."""
    for name, prompt, response, expected, mistake in _steps_cases():
        ended = name != "not ended"
        assert reference_steps_in_order(prompt, response, ended) == expected, name  # the cases themselves
        got = steps_in_order(prompt, response, ended)
        if not isinstance(got, (bool, int)) or isinstance(got, float):
            raise CheckFailed(f"return True or False, got {type(got).__name__}")
        if bool(got) != expected:
            raise CheckFailed(f"{mistake} (case {name!r}: {response!r} -> {bool(got)})")
    return "ten hand-made answers: order, gaps, too few, filler, off-topic, repeats, cut off, empty"


# --- Exercise 9.4 ----------------------------------------------------------------------------------------

@check(reference=reference_simpo_loss)
def check_simpo_loss(simpo_loss):
    """simpo_loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, beta, gamma)
    -> (loss, chosen_rewards, rejected_rewards)."""
    g = torch.Generator().manual_seed(4)
    B = 6
    # several (beta, gamma): a wrong formula can coincide with the right one at a single setting
    for beta, gamma in ((2.0, 0.8), (2.5, 1.4), (10.0, 0.3)):
        lc = torch.randint(3, 20, (B,), generator=g).float()
        lr = torch.randint(3, 20, (B,), generator=g).float()
        pc = -lc * (torch.rand(B, generator=g) * 2 + 0.2)
        pr = -lr * (torch.rand(B, generator=g) * 2 + 0.2)
        pc[0], lc[0], pr[0], lr[0] = -6.0, 3.0, -6.0, 3.0  # a tie: equal rewards, the loss is log(1 + e^gamma)
        want = _check_simpo_once(simpo_loss, pc, pr, lc, lr, beta, gamma, B)
    # extremes: a pair the policy gets very wrong must give a large finite loss, not inf
    pc = torch.tensor([-400.0, -2.0]); pr = torch.tensor([-2.0, -400.0]); lens = torch.tensor([1.0, 1.0])
    loss = simpo_loss(pc, pr, lens, lens, 2.0, 0.5)[0]
    if not torch.isfinite(loss).all():
        raise CheckFailed("the loss is inf on a pair with a large margin: -log(sigmoid(x)) overflows; use "
                          "-F.logsigmoid(x), which is computed stably")
    return f"SimPO Eq. 6 at three (beta, gamma) with a tie and an extreme pair (loss {want.item():.4f} at the last), " \
           "rewards beta / |y| log pi(y|x), no reference model"


def _check_simpo_once(simpo_loss, pc, pr, lc, lr, beta, gamma, B):
    inputs = [x.clone() for x in (pc, pr, lc, lr)]
    pc_g = inputs[0].requires_grad_()
    out = simpo_loss(*inputs, beta, gamma)
    if not (isinstance(out, tuple) and len(out) == 3):
        raise CheckFailed("return three things: (loss, chosen_rewards, rejected_rewards)")
    loss, chosen_rewards, rejected_rewards = out
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CheckFailed("the loss should be a scalar tensor: the mean over the pairs")
    if not all(torch.equal(a.detach(), b) for a, b in zip(inputs, (pc, pr, lc, lr))):
        raise CheckFailed("the inputs were changed in place")
    want, want_c, want_r = reference_simpo_loss(pc, pr, lc, lr, beta=beta, gamma=gamma)
    ac, ar = pc / lc, pr / lr                                                      # (B,) per-token averages
    wrong = {
        "no_length": (-F.logsigmoid(beta * (pc - pr) - gamma)).mean(),
        "gamma_plus": (-F.logsigmoid(beta * (ac - ar) + gamma)).mean(),
        "gamma_inside": (-F.logsigmoid(beta * (ac - ar - gamma))).mean(),
        "no_beta": (-F.logsigmoid(ac - ar - gamma)).mean(),
        "swapped": (-F.logsigmoid(beta * (ar - ac) - gamma)).mean(),
        "sum": (-F.logsigmoid(beta * (ac - ar) - gamma)).sum(),
        "no_log": (-torch.sigmoid(beta * (ac - ar) - gamma)).mean(),
        "dpo_style": (-F.logsigmoid(beta * (pc - pr))).mean(),
    }
    messages = {
        "no_length": "the log-probabilities were not divided by the answers' lengths: SimPO's reward is the AVERAGE "
                     "log-probability per token, beta / |y| log pi(y|x)",
        "gamma_plus": "the margin has the wrong sign: subtract gamma, -log sigmoid(r_w - r_l - gamma)",
        "gamma_inside": "gamma is inside beta's product: the margin is subtracted after scaling, beta * (...) - gamma",
        "no_beta": "beta is missing: the implicit reward is beta times the average log-probability",
        "swapped": "chosen and rejected are swapped: the loss must fall when the chosen answer gains probability",
        "sum": "average over the pairs (mean), do not sum",
        "no_log": "take the log of the sigmoid: the loss is -log sigmoid(...)",
        "dpo_style": "that is DPO without a reference and without length normalisation: divide by |y| and subtract gamma",
    }
    name_the_mistake(loss.detach(), want, wrong, messages, what="the SimPO loss")
    for what, got, ref in (("chosen_rewards", chosen_rewards, want_c), ("rejected_rewards", rejected_rewards, want_r)):
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B,):
            raise CheckFailed(f"{what} should be one reward per pair, shape ({B},)")
        if same(got.detach(), ref / beta):
            raise CheckFailed(f"{what} is missing beta: the implicit reward is beta / |y| log pi(y|x)")
        if not same(got.detach(), ref):
            raise CheckFailed(f"{what} should be beta / |y| log pi(y|x), SimPO's implicit reward (Eq. 4)")
        if got.requires_grad:
            raise CheckFailed(f"detach {what}: it is a diagnostic, not part of the loss")
    if not loss.requires_grad:
        raise CheckFailed("the loss has no gradient: do not detach the policy's log-probs inside the loss")
    loss.backward()
    if pc_g.grad is None or not (pc_g.grad < 0).all():
        raise CheckFailed("the gradient should raise every chosen answer's log-probability")
    return want
