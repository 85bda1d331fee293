"""Notebook 2's checks cannot be fooled: the package reference passes, and every wrong answer below - in
place, on expanded inputs, at one parameter value only, unstable, and each promised mistake - gets ✗ with
its own message."""

import pytest
import torch
import torch.nn.functional as F

from rlhf_course import ppo
from rlhf_course.checks.core import run_check as run
from rlhf_course.checks.nb02_policy_gradients import (
    check_compute_gae,
    check_masked_whiten,
    check_reinforce_loss,
    check_sequence_logprob,
)
from rlhf_course.logprobs import sequence_logprob, token_logprobs
from rlhf_course.policy_gradient import reinforce_loss


@pytest.mark.parametrize("check_fn, reference", [(check_reinforce_loss, reinforce_loss),
                                                 (check_masked_whiten, ppo.masked_whiten),
                                                 (check_compute_gae, ppo.compute_gae),
                                                 (check_sequence_logprob, sequence_logprob)])
def test_the_package_reference_passes(check_fn, reference):
    assert check_fn.reference is reference
    assert run(check_fn, reference)[0] is True


# --- reinforce_loss -------------------------------------------------------------------------------

def _detached(lp, g, b):
    """The promised mistake: a loss built from detached log-probs (wrapped to look trainable)."""
    return torch.tensor(-((g - b) * lp.detach()).mean().item(), requires_grad=True)


def _subtracts_in_place(lp, g, b):
    g -= b
    return -(g.detach() * lp).mean()


REINFORCE = [
    (lambda lp, g, b: ((g - b) * lp).mean(), "sign is wrong"),
    (lambda lp, g, b: -(g * lp).mean(), "baseline was not subtracted"),
    (lambda lp, g, b: -((g - b) * lp).sum(), "summed over the batch"),
    (lambda lp, g, b: -((g - b) * lp).mean().item(), "0-dimensional"),
    (lambda lp, g, b: -((g - b) * lp.detach()).mean(), "no gradient reaching the policy"),
    (_detached, "no gradient reaching the policy"),
    (lambda lp, g, b: -((g - b) * lp).mean(), "baseline receives gradients"),
    (_subtracts_in_place, "changed `g` in place"),
]


# --- masked_whiten --------------------------------------------------------------------------------

def _per_row(x, m):
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
    var = (((x - mean) * m) ** 2).sum(1, keepdim=True) / m.sum(1, keepdim=True)
    return (x - mean) / (var + 1e-8).sqrt() * m


def _no_eps(x, m):
    mean = (x * m).sum() / m.sum()
    var = (((x - mean) * m) ** 2).sum() / m.sum()
    return (x - mean) / var.sqrt() * m


def _whitens_in_place(x, m):
    mean = (x * m).sum() / m.sum()
    x -= mean
    return x * torch.rsqrt(((x * m) ** 2).sum() / m.sum() + 1e-8) * m


WHITEN = [
    (lambda x, m: (x - x.mean()) / x.std(), "padding was not masked"),
    (lambda x, m: ppo.masked_whiten(x, m) + (1 - m) * 3.0, "padding positions should be 0"),
    (_per_row, "whole batch"),
    (_no_eps, "add a small epsilon"),                                  # unstable: std 0 gives NaN
    (_whitens_in_place, "changed `x` in place"),
]


def test_bessel_corrected_whitening_is_accepted():
    def unbiased(x, m):
        mean = (x * m).sum() / m.sum()
        var = (((x - mean) * m) ** 2).sum() / (m.sum() - 1)
        return (x - mean) / (var + 1e-8).sqrt() * m

    assert run(check_masked_whiten, unbiased)[0] is True  # TRL uses the unbiased variance


# --- compute_gae ----------------------------------------------------------------------------------

def gae(rewards, values, mask, gamma, lam, *, mask_values=True):
    v = values * mask if mask_values else values
    adv, last, T = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0]), rewards.shape[1]
    for t in reversed(range(T)):
        nxt = v[:, t + 1] if t + 1 < T else torch.zeros_like(v[:, 0])
        last = rewards[:, t] + gamma * nxt - v[:, t] + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, adv + v


def _masks_values_in_place(rewards, values, mask, gamma, lam):
    values *= mask  # the example: right numbers, then the next cell crashes on an expanded view
    return gae(rewards, values, mask, gamma, lam)


def _no_padding_bootstrap_guard(rewards, values, mask, gamma, lam):
    """The promised mistake, as a student writes it: V(s_{t+1}) read straight from `values`, padding included."""
    B, T = rewards.shape
    adv, last = torch.zeros_like(rewards), torch.zeros(B)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros(B)
        last = (rewards[:, t] + gamma * next_value - values[:, t] * mask[:, t]) + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, adv + values * mask


GAE = [
    (lambda r, v, m, g, l: gae(r, v, m, g, l, mask_values=False), "bootstrapped from a padded position"),
    (_no_padding_bootstrap_guard, "bootstrapped from a padded position"),
    (lambda r, v, m, g, l: gae(r, v, m, l, g), "lambda and gamma are swapped"),
    (lambda r, v, m, g, l: gae(r, v, m, g, 0.0), "one-step TD errors"),
    (lambda r, v, m, g, l: (gae(r, v, m, g, l)[0],) * 2, "you returned the advantages"),
    (lambda r, v, m, g, l: gae(r, v, m, 0.9, 0.7), "gamma = "),       # degenerate: fixed gamma and lambda
    (_masks_values_in_place, "changed `values` in place"),
]


# --- sequence_logprob -----------------------------------------------------------------------------

def _normalises_logits_in_place(logits, ids, mask):
    logits -= logits.logsumexp(-1, keepdim=True)
    return (logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(1)


SEQUENCE = [
    (lambda lg, ids, m: (token_logprobs(lg, ids) * m).sum(1), "off by one"),
    (lambda lg, ids, m: token_logprobs(lg[:, :-1], ids[:, 1:]).sum(1), "prompt tokens too"),
    (lambda lg, ids, m: (token_logprobs(lg[:, :-1], ids[:, 1:]) * m[:, :-1]).sum(1), "mask is not shifted"),
    (lambda lg, ids, m: (lg[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) * m[:, 1:]).sum(1), "raw logits"),
    (lambda lg, ids, m: (F.log_softmax(lg[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                         * m[:, 1:]).sum(1).detach(), "no gradient"),
    (lambda lg, ids, m: (torch.log(F.softmax(lg[:, :-1], -1)).gather(-1, ids[:, 1:, None]).squeeze(-1)
                         * m[:, 1:]).sum(1), "use log_softmax"),   # unstable at large logits
    (_normalises_logits_in_place, "changed `logits` in place"),
]

CASES = [pytest.param(check_fn, fn, words, id=f"{check_fn.__name__}:{words}")
         for check_fn, wrongs in ((check_reinforce_loss, REINFORCE), (check_masked_whiten, WHITEN),
                                  (check_compute_gae, GAE), (check_sequence_logprob, SEQUENCE))
         for fn, words in wrongs]


@pytest.mark.parametrize("check_fn, wrong, words", CASES)
def test_each_wrong_answer_gets_its_message(check_fn, wrong, words, fails_with):
    fails_with(check_fn, wrong, words)


def test_the_baseline_gradient_case_is_a_learned_value():
    """REINFORCE's 'baseline receives gradients' wrong answer above is right on float baselines: the check
    catches it only with a learned (B,) value, which it uses."""
    ok, printed = run(check_reinforce_loss, lambda lp, g, b: -((g - b) * lp).mean())
    assert ok is False and "baseline receives gradients" in printed
