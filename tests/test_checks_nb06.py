"""Notebook 6's checks cannot be fooled: the package's functions pass (the exercises have their signature
and return), and every wrong answer below - in place, at one coefficient only, and each promised mistake
(the score overwriting the last token's KL term, the advantage clipped instead of the ratio, ...) - gets ✗
with its own message. test_exercises.py proves the stub fails and the solution passes."""

import contextlib

import pytest
import torch

from rlhf_course import ppo
from rlhf_course.checks import nb06_ppo as checks
from rlhf_course.checks.core import run_check as _run
from rlhf_course.logprobs import token_logprobs


@pytest.mark.parametrize("check_fn, reference", [(checks.check_compute_rewards, ppo.compute_rewards),
                                                 (checks.check_ppo_policy_loss, ppo.ppo_policy_loss),
                                                 (checks.check_ppo_value_loss, ppo.ppo_value_loss)])
def test_the_package_function_passes(check_fn, reference):
    assert check_fn.reference is reference
    assert _run(check_fn, reference)[0] is True


# --- compute_rewards ------------------------------------------------------------------------------

def _rewards_with(kl_sign=1.0, where="last", mask_kl=True, fixed_coef=None):
    def compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
        kl = (logprobs - ref_logprobs) * (mask if mask_kl else 1)
        rewards = -kl_sign * (fixed_coef or kl_coef) * kl
        last = mask.sum(1).long() - 1
        rows = torch.arange(len(scores))
        if where == "last":
            rewards[rows, last] += scores
        elif where == "overwrite":
            rewards[rows, last] = scores
        elif where == "first":
            rewards[:, 0] += scores
        elif where == "column":
            rewards[:, -1] += scores
        elif where == "every":
            rewards = rewards + scores[:, None] * mask
        return rewards, kl
    return compute_rewards


def _kl_in_place(scores, logprobs, ref_logprobs, mask, kl_coef):
    logprobs -= ref_logprobs           # the example: PPO then reuses these as the old log-probs
    kl = logprobs * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores)), mask.sum(1).long() - 1] += scores
    return rewards, kl


REWARDS = [
    (_rewards_with(kl_sign=-1.0), "wrong sign"),
    (_rewards_with(where="overwrite"), "replaced the last token's KL penalty"),
    (_rewards_with(where="every"), "added to every token"),
    (_rewards_with(where="first"), "first token"),
    (_rewards_with(where="column"), "last column"),
    (_rewards_with(mask_kl=False), "padding positions were not masked"),
    (_rewards_with(fixed_coef=0.1), "kl_coef = "),
    (_kl_in_place, "changed `logprobs` in place"),
]


# --- ppo_policy_loss ------------------------------------------------------------------------------

def _policy_loss(kind, fixed_clip=None):
    def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef):
        eps = fixed_clip or clip_coef
        ratio = torch.exp(logprobs - old_logprobs)
        clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
        stats = ppo.ppo_policy_loss(logprobs.detach(), old_logprobs, advantages, mask, clip_coef)[1]
        if kind == "min":
            per_token = torch.min(-advantages * ratio, -advantages * clipped)
        elif kind == "clip_adv":
            per_token = torch.max(-advantages * ratio, -torch.clamp(advantages, 1 - eps, 1 + eps) * ratio)
        elif kind == "clip_adv_only":
            per_token = -torch.clamp(advantages, 1 - eps, 1 + eps) * ratio
        elif kind == "padding":
            return torch.max(-advantages * ratio, -advantages * clipped).mean(), stats
        elif kind == "detached":
            return ppo.ppo_policy_loss(logprobs.detach(), old_logprobs, advantages, mask, clip_coef)[0], stats
        elif kind == "clipfrac_float":
            return ppo.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef)[0], stats["clipfrac"]
        elif kind == "k1":
            return (ppo.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef)[0],
                    stats | {"approx_kl": ppo.masked_mean(old_logprobs - logprobs, mask).item()})
        else:
            per_token = torch.max(-advantages * ratio, -advantages * clipped)
        return ppo.masked_mean(per_token, mask), stats
    return ppo_policy_loss


def _normalises_advantages_in_place(logprobs, old_logprobs, advantages, mask, clip_coef):
    advantages -= 0.0  # a no-op in value, but written: PPO's minibatches share this tensor
    return ppo.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef)


POLICY = [
    (_policy_loss("min"), "min of the two terms"),
    (_policy_loss("clip_adv"), "clipped the advantage, not the ratio"),
    (_policy_loss("clip_adv_only"), "clipped the advantage, not the ratio"),
    (_policy_loss("padding"), "padding positions were counted"),
    (_policy_loss("detached"), "no gradient"),
    (_policy_loss("clipfrac_float"), "'approx_kl' and 'clipfrac'"),       # the old (loss, clipfrac) return
    (_policy_loss("k1"), "k3 estimate"),
    (_policy_loss("right", fixed_clip=0.2), "clip_coef = "),             # one clip range only
    (_normalises_advantages_in_place, "changed `advantages` in place"),
]


# --- ppo_value_loss -------------------------------------------------------------------------------

def _value_loss(kind):
    def ppo_value_loss(values, old_values, returns, mask, eps):
        clipped = old_values + torch.clamp(values - old_values, -eps, eps)
        stats = ppo.ppo_value_loss(values.detach(), old_values, returns, mask, eps)[1]
        if kind == "min":
            return 0.5 * ppo.masked_mean(torch.min((values - returns) ** 2, (clipped - returns) ** 2), mask), stats
        if kind == "unclipped":
            return 0.5 * ppo.masked_mean((values - returns) ** 2, mask), stats
        if kind == "half":
            return ppo.masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask), stats
        if kind == "scalar":
            return ppo.ppo_value_loss(values, old_values, returns, mask, eps)[0]
        raise ValueError(kind)
    return ppo_value_loss


def _returns_in_place(values, old_values, returns, mask, eps):
    returns *= mask
    return ppo.ppo_value_loss(values, old_values, returns, mask, eps)


VALUE = [
    (_value_loss("min"), "min of the clipped and unclipped"),
    (_value_loss("unclipped"), "no clipping"),
    (_value_loss("half"), "factor 1/2"),
    (_value_loss("scalar"), "(v_loss, stats)"),                          # the old return, without the stats
    (_returns_in_place, "changed `returns` in place"),
]

CASES = [pytest.param(check_fn, fn, words, id=f"{check_fn.__name__}:{words}")
         for check_fn, wrongs in ((checks.check_compute_rewards, REWARDS), (checks.check_ppo_policy_loss, POLICY),
                                  (checks.check_ppo_value_loss, VALUE))
         for fn, words in wrongs]


@pytest.mark.parametrize("check_fn, wrong, words", CASES)
def test_each_wrong_answer_gets_its_message(check_fn, wrong, words, fails_with):
    fails_with(check_fn, wrong, words)


# --- rollout_kl: the silent bugs ------------------------------------------------------------------

def _kl(reference_on: bool, masked: bool):
    def rollout_kl(model, input_ids, attention_mask, response_mask):
        logprobs = token_logprobs(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1], input_ids[:, 1:])
        with contextlib.nullcontext() if reference_on else model.disable_adapter():
            ref_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        per_token = logprobs - token_logprobs(ref_logits[:, :-1], input_ids[:, 1:])
        return (per_token * response_mask[:, 1:] if masked else per_token).sum(1)
    return rollout_kl


def test_rollout_kl_names_both_silent_bugs_and_passes_the_fix():
    assert "exactly 0" in _run(checks.check_rollout_kl, _kl(reference_on=True, masked=False))[1]
    assert "summed over the prompt" in _run(checks.check_rollout_kl, _kl(reference_on=False, masked=False))[1]
    ok, printed = _run(checks.check_rollout_kl, _kl(reference_on=False, masked=True))
    assert ok is True and "✓" in printed, printed
    ok, printed = _run(checks.check_rollout_kl, checks.rollout_kl_reference)
    assert ok is True, printed
