"""Notebook 6's checks name the mistake: each known wrong implementation gets its own message
(test_exercises.py proves the stub fails and the solution passes)."""

import contextlib

import pytest
import torch

from rlhf_course import ppo
from rlhf_course.checks import nb06_ppo as checks
from rlhf_course.checks.core import run_check as _run
from rlhf_course.logprobs import token_logprobs


def _rewards_with(kl_sign=1.0, where="last", mask_kl=True):
    def compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
        kl = (logprobs - ref_logprobs) * (mask if mask_kl else 1)
        rewards = -kl_sign * kl_coef * kl
        if where == "last":
            rewards[torch.arange(len(scores)), mask.sum(1).long() - 1] += scores
        elif where == "first":
            rewards[:, 0] += scores
        elif where == "column":
            rewards[:, -1] += scores
        elif where == "every":
            rewards = rewards + scores[:, None] * mask
        return rewards, kl
    return compute_rewards


@pytest.mark.parametrize("fn, message", [
    (_rewards_with(kl_sign=-1.0), "wrong sign"),
    (_rewards_with(where="every"), "added to every token"),
    (_rewards_with(where="first"), "first token"),
    (_rewards_with(where="column"), "last column"),
    (_rewards_with(mask_kl=False), "padding positions were not masked"),
])
def test_compute_rewards_mistakes_are_named(fn, message, fails_with):
    fails_with(checks.check_compute_rewards, fn, message)
    assert _run(checks.check_compute_rewards, _rewards_with())[0] is True


def _policy_loss(kind):
    def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef):
        ratio = torch.exp(logprobs - old_logprobs)
        clipped = torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        if kind == "min":
            per_token = torch.min(-advantages * ratio, -advantages * clipped)
        elif kind == "clip_adv":
            per_token = torch.max(-advantages * ratio, -torch.clamp(advantages, 1 - clip_coef, 1 + clip_coef) * ratio)
        elif kind == "padding":
            return torch.max(-advantages * ratio, -advantages * clipped).mean(), 0.0
        elif kind == "detached":
            return ppo.ppo_policy_loss(logprobs.detach(), old_logprobs, advantages, mask, clip_coef)[0], 0.0
        return ppo.masked_mean(per_token, mask), 0.0
    return ppo_policy_loss


@pytest.mark.parametrize("kind, message", [
    ("min", "min of the two terms"), ("clip_adv", "clipped the advantage, not the ratio"),
    ("padding", "padding positions were counted"), ("detached", "no gradient"),
])
def test_policy_loss_mistakes_are_named(kind, message, fails_with):
    fails_with(checks.check_ppo_policy_loss, _policy_loss(kind), message)


def test_value_loss_mistakes_are_named():
    def v_min(values, old_values, returns, mask, eps):
        clipped = old_values + torch.clamp(values - old_values, -eps, eps)
        return 0.5 * ppo.masked_mean(torch.min((values - returns) ** 2, (clipped - returns) ** 2), mask)

    def v_unclipped(values, old_values, returns, mask, eps):
        return 0.5 * ppo.masked_mean((values - returns) ** 2, mask)

    assert "min of the clipped and unclipped" in _run(checks.check_ppo_value_loss, v_min)[1]
    assert "no clipping" in _run(checks.check_ppo_value_loss, v_unclipped)[1]
    ok, printed = _run(checks.check_ppo_value_loss, lambda *a: ppo.ppo_value_loss(*a)[0])
    assert ok is True and "✓" in printed


def _kl(reference_on: bool, masked: bool):
    def rollout_kl(model, input_ids, attention_mask, response_mask):
        logprobs = token_logprobs(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1], input_ids[:, 1:])
        with contextlib.nullcontext() if reference_on else model.disable_adapter():
            ref_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        per_token = logprobs - token_logprobs(ref_logits[:, :-1], input_ids[:, 1:])
        return (per_token * response_mask[:, 1:] if masked else per_token).sum(1)
    return rollout_kl


def test_rollout_kl_names_both_silent_bugs():
    assert "exactly 0" in _run(checks.check_rollout_kl, _kl(reference_on=True, masked=False))[1]
    assert "summed over the prompt" in _run(checks.check_rollout_kl, _kl(reference_on=False, masked=False))[1]
    ok, printed = _run(checks.check_rollout_kl, _kl(reference_on=False, masked=True))
    assert ok is True and "✓" in printed, printed
