"""Notebook 2's checks name the mistake: each typical wrong answer gets its own message."""

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
from rlhf_course.logprobs import token_logprobs


# --- reinforce_loss -------------------------------------------------------------------------------

def test_reinforce_loss_check_passes_the_reference_and_names_each_mistake(fails_with):
    def right(logprobs, returns, baseline):
        return -((returns - baseline).detach() * logprobs).mean()

    assert run(check_reinforce_loss, right)[0] is True
    fails_with(check_reinforce_loss, lambda lp, g, b: ((g - b) * lp).mean(), "sign is wrong")
    fails_with(check_reinforce_loss, lambda lp, g, b: -(g * lp).mean(), "baseline was not subtracted")
    fails_with(check_reinforce_loss, lambda lp, g, b: -((g - b) * lp).sum(), "summed over the batch")
    fails_with(check_reinforce_loss, lambda lp, g, b: -((g - b) * lp).mean().item(), "0-dimensional")
    fails_with(check_reinforce_loss, lambda lp, g, b: -((g - b) * lp).mean(), "baseline receives gradients")


# --- masked_whiten --------------------------------------------------------------------------------

def test_masked_whiten_check_passes_the_package_and_catches_unmasked_padding(fails_with):
    assert run(check_masked_whiten, ppo.masked_whiten)[0] is True
    fails_with(check_masked_whiten, lambda x, m: (x - x.mean()) / x.std(), "padding was not masked")
    fails_with(check_masked_whiten, lambda x, m: ppo.masked_whiten(x, m) + (1 - m) * 3.0, "padding positions should be 0")

    def per_row(x, m):
        mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        var = (((x - mean) * m) ** 2).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return (x - mean) / (var + 1e-8).sqrt() * m

    fails_with(check_masked_whiten, per_row, "whole batch")

    def unbiased(x, m):
        mean = (x * m).sum() / m.sum()
        var = (((x - mean) * m) ** 2).sum() / (m.sum() - 1)
        return (x - mean) / var.sqrt() * m

    assert run(check_masked_whiten, unbiased)[0] is True  # Bessel's correction is fine (TRL uses it)


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


def test_compute_gae_check_passes_the_package_and_names_each_mistake(fails_with):
    assert run(check_compute_gae, ppo.compute_gae)[0] is True
    assert run(check_compute_gae, gae)[0] is True
    fails_with(check_compute_gae, lambda r, v, m, g, l: gae(r, v, m, g, l, mask_values=False),
                      "bootstrapped from a padded position")
    fails_with(check_compute_gae, lambda r, v, m, g, l: gae(r, v, m, l, g), "lambda and gamma are swapped")
    fails_with(check_compute_gae, lambda r, v, m, g, l: gae(r, v, m, g, 0.0), "one-step TD errors")
    fails_with(check_compute_gae, lambda r, v, m, g, l: (gae(r, v, m, g, l)[0],) * 2, "you returned the advantages")


# --- sequence_logprob -----------------------------------------------------------------------------

def test_sequence_logprob_check_passes_the_reference_and_names_each_mistake(fails_with):
    def right(logits, ids, mask):
        return (token_logprobs(logits[:, :-1], ids[:, 1:]) * mask[:, 1:]).sum(1)

    assert run(check_sequence_logprob, right)[0] is True
    fails_with(check_sequence_logprob, lambda lg, ids, m: (token_logprobs(lg, ids) * m).sum(1), "off by one")
    fails_with(check_sequence_logprob, lambda lg, ids, m: token_logprobs(lg[:, :-1], ids[:, 1:]).sum(1),
                      "prompt tokens too")
    fails_with(check_sequence_logprob, lambda lg, ids, m: (token_logprobs(lg[:, :-1], ids[:, 1:]) * m[:, :-1]).sum(1),
                      "mask is not shifted")
    fails_with(check_sequence_logprob,
                      lambda lg, ids, m: (lg[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) * m[:, 1:]).sum(1),
                      "raw logits")
    fails_with(check_sequence_logprob,
                      lambda lg, ids, m: (F.log_softmax(lg[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                                          * m[:, 1:]).sum(1).detach(), "no gradient")
