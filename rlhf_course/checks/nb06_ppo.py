"""Checks for notebook 6 (PPO): per-token rewards with the KL penalty, the clipped policy loss, the
clipped value loss, and the "find the silent bug" KL of a rollout. Each compares with `rlhf_course.ppo`,
the exercises' references with the same signature and return (`compute_rewards` -> (rewards, kl),
`ppo_policy_loss` -> (pg_loss, {approx_kl, clipfrac}), `ppo_value_loss` -> (v_loss, {vf_clipfrac})), or
with `rlhf_course.evaluation.kl_to_reference`, on small inputs it builds itself with several KL
coefficients and clip ranges, views and expanded tensors; it names the mistake when a known wrong
version matches instead, and an input changed in place is one (PPO reuses its rollout tensors)."""

from __future__ import annotations

import torch

from rlhf_course import ppo
from rlhf_course.checks.core import (CheckFailed, call, check, close, draws, name_the_mistake, quiet_loading, same,
                                     same_on_layouts)


def _rollout_tensors(seed: int = 0, B: int = 4, T: int = 7) -> dict:
    """Log-probs, values, advantages... for B answers of different lengths, right-padded to T."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 3, 5, 1])[:B]                                 # one answer fills the row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()             # (B, T)
    old_logprobs = -torch.rand(B, T, generator=g) * 3                        # (B, T)
    logprobs = old_logprobs + 0.4 * torch.randn(B, T, generator=g)           # ratios well outside 1 +- 0.2
    return {"mask": mask, "lengths": lengths, "old_logprobs": old_logprobs, "logprobs": logprobs,
            "ref_logprobs": old_logprobs - 0.5 * torch.randn(B, T, generator=g),
            "scores": torch.randn(B, generator=g) * 2,
            "advantages": torch.randn(B, T, generator=g),
            "values": torch.randn(B, T, generator=g), "old_values": torch.randn(B, T, generator=g),
            "returns": torch.randn(B, T, generator=g)}


def _pair(out, first: str, second: str):
    if not (isinstance(out, tuple) and len(out) == 2):
        raise CheckFailed(f"return two things, as the package's function does: ({first}, {second})")
    return out


# --- Exercise 6.1 ---------------------------------------------------------------------------------

@check(reference=ppo.compute_rewards)
def check_compute_rewards(compute_rewards):
    """compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef) -> (rewards (B, T), kl (B, T))."""
    coefs = draws(0.02, 0.5, 3, seed=15, avoid=(0.1,))
    for seed, beta in zip((1, 4, 5), coefs):
        x = _rollout_tensors(seed)
        _rewards_case(compute_rewards, x["scores"], x["logprobs"], x["ref_logprobs"], x["mask"], beta)
    x = _rollout_tensors(1)
    same_on_layouts(compute_rewards, [("scores", x["scores"]), ("logprobs", x["logprobs"]),
                                      ("ref_logprobs", x["ref_logprobs"]), ("mask", x["mask"]), ("kl_coef", coefs[0])],
                    expand=("ref_logprobs",), compare=lambda got, want: same(got[0], want[0]) and same(got[1], want[1]))
    return (f"per-token -kl_coef * KL (kl_coef = {', '.join(map(str, coefs))}), plus the score on each answer's last "
            "real token; the inputs left as they were")


def _rewards_case(compute_rewards, scores, lp, ref, mask, beta) -> None:
    rewards, kl = _pair(call(compute_rewards, scores, lp, ref, mask, beta), "rewards", "kl")
    want_rewards, want_kl = ppo.compute_rewards(scores, lp, ref, mask, beta)
    if tuple(rewards.shape) != tuple(want_rewards.shape):
        raise CheckFailed(f"rewards should be (B, T) = {tuple(want_rewards.shape)}, one per answer token; got {tuple(rewards.shape)}")
    if same(kl, -want_kl):
        raise CheckFailed("kl has the wrong sign: the k1 estimate is log pi - log pi_ref (policy minus reference)")
    if same(kl, lp - ref) and not same(kl, want_kl):
        raise CheckFailed("padding positions were not masked in kl: multiply log pi - log pi_ref by the mask")
    close(kl, want_kl, what="kl (log pi - log pi_ref on the answer's tokens)")
    if same(rewards, want_rewards):
        return
    last = mask.sum(1).long() - 1
    penalty = -beta * want_kl
    rows = torch.arange(len(scores))
    wrong = {}
    wrong["sign"] = beta * want_kl
    wrong["sign"][rows, last] += scores
    wrong["overwrite"] = penalty.clone()
    wrong["overwrite"][rows, last] = scores
    wrong["every"] = penalty + scores[:, None] * mask
    wrong["first"] = penalty.clone()
    wrong["first"][:, 0] += scores
    wrong["final_column"] = penalty.clone()
    wrong["final_column"][:, -1] += scores
    wrong["no_beta"] = -want_kl.clone()
    wrong["no_beta"][rows, last] += scores
    wrong["no_score"] = penalty
    wrong["after_end"] = penalty.clone()
    after = (last + 1).clamp(max=mask.shape[1] - 1)
    wrong["after_end"][rows, after] += scores
    messages = {
        "sign": "the KL term has the wrong sign: the penalty is -kl_coef * (log pi - log pi_ref), so drifting from "
                "the reference costs reward",
        "overwrite": "the score replaced the last token's KL penalty (`rewards[i, last] = score`): add it, "
                     "`rewards[i, last] += score` - that token drifted from the reference too",
        "every": "the score was added to every token: it belongs on the last token of the answer only (the reward "
                 "model scores the whole answer once)",
        "first": "the score was added to the first token: it arrives when the answer ends, on its last real token",
        "final_column": "the score landed in the last column, which is padding for shorter answers: put it on each "
                        "answer's last real token (mask.sum(1) - 1)",
        "no_beta": "the KL term is not scaled by kl_coef",
        "no_score": "the score is missing: add it to each answer's last token",
        "after_end": "the score landed one position after the answer's last token (index mask.sum(1), not mask.sum(1) - 1)",
    }
    name_the_mistake(rewards, want_rewards, wrong, messages, what=f"rewards (kl_coef = {beta})")


# --- Exercise 6.2 ---------------------------------------------------------------------------------

@check(reference=ppo.ppo_policy_loss)
def check_ppo_policy_loss(ppo_policy_loss):
    """ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef) -> (pg_loss, {approx_kl, clipfrac})."""
    clips = draws(0.1, 0.35, 3, seed=16, avoid=(0.2,))
    for seed, eps in zip((2, 6, 7), clips):
        _policy_case(ppo_policy_loss, _rollout_tensors(seed), eps)
    x = _rollout_tensors(2)
    same_on_layouts(ppo_policy_loss, [("logprobs", x["logprobs"]), ("old_logprobs", x["old_logprobs"]),
                                      ("advantages", x["advantages"]), ("mask", x["mask"]), ("clip_coef", clips[0])],
                    expand=("advantages",))
    return (f"pg_loss, approx_kl and clipfrac as ppo.ppo_policy_loss for clip_coef = {', '.join(map(str, clips))}, "
            "gradients too")


def _policy_case(ppo_policy_loss, x: dict, eps: float) -> None:
    lp = x["logprobs"].clone().requires_grad_()
    old, adv, mask = x["old_logprobs"], x["advantages"], x["mask"]
    loss, stats = _pair(call(ppo_policy_loss, lp, old, adv, mask, eps), "pg_loss", "stats")
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CheckFailed("pg_loss should be a scalar tensor (a masked mean over the answer tokens)")
    want, want_stats = ppo.ppo_policy_loss(x["logprobs"], old, adv, mask, eps)
    ratio = torch.exp(x["logprobs"] - old)
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
    mean = lambda t: ppo.masked_mean(t, mask)  # noqa: E731
    wrong = {
        "min": mean(torch.min(-adv * ratio, -adv * clipped)),
        "sign": mean(torch.max(adv * ratio, adv * clipped)),
        "sign_min": mean(torch.min(adv * ratio, adv * clipped)),
        "clip_adv": mean(torch.max(-adv * ratio, -torch.clamp(adv, 1 - eps, 1 + eps) * ratio)),
        "clip_adv_only": mean(-torch.clamp(adv, 1 - eps, 1 + eps) * ratio),
        "clip_adv_eps": mean(torch.max(-adv * ratio, -torch.clamp(adv, -eps, eps) * ratio)),
        "unclipped": mean(-adv * ratio),
        "padding": torch.max(-adv * ratio, -adv * clipped).mean(),
        "no_exp": mean(torch.max(-adv * (x["logprobs"] - old), -adv * torch.clamp(x["logprobs"] - old, 1 - eps, 1 + eps))),
        "ratio_div": mean(torch.max(-adv * (x["logprobs"] / old), -adv * torch.clamp(x["logprobs"] / old, 1 - eps, 1 + eps))),
    }
    clip_adv = "you clipped the advantage, not the ratio: clamp the ratio to [1 - clip_coef, 1 + clip_coef] - the " \
               "advantage is a fixed weight; it is the policy's change (the ratio) that must stay in the trust region"
    messages = {
        "min": "you took the min of the two terms: PPO's objective takes the min, so its negative, the loss, takes the "
               "max (the pessimistic bound)",
        "sign": "the loss has the wrong sign: minimising it must raise the probability of tokens with a positive "
                "advantage (loss = -advantage * ratio)",
        "sign_min": "the sign is flipped (you wrote the objective, not the loss): minimise -advantage * ratio, with the max",
        "clip_adv": clip_adv, "clip_adv_only": clip_adv, "clip_adv_eps": clip_adv,
        "unclipped": "there is no clipping: take the max of -A * ratio and -A * clamp(ratio, 1 - eps, 1 + eps)",
        "padding": "padding positions were counted in the mean: average over the answer tokens only (the mask)",
        "no_exp": "the ratio is exp(logprobs - old_logprobs), not the difference of the log-probs",
        "ratio_div": "the ratio is exp(logprobs - old_logprobs): dividing log-probs is not dividing probabilities",
    }
    name_the_mistake(loss.detach(), want, wrong, messages, what=f"pg_loss (clip_coef = {eps})")
    if not loss.requires_grad:
        raise CheckFailed("pg_loss has no gradient: do not detach it (or compute it under torch.no_grad())")
    loss.backward()
    lp_ref = x["logprobs"].clone().requires_grad_()
    ppo.ppo_policy_loss(lp_ref, old, adv, mask, eps)[0].backward()
    if lp.grad is None or not same(lp.grad, lp_ref.grad):
        raise CheckFailed("the loss has the right value but the wrong gradient: clipped tokens must get no gradient "
                          "(use torch.clamp on the ratio, and keep the ratio attached to logprobs)")
    if not isinstance(stats, dict) or not {"approx_kl", "clipfrac"} <= set(stats):
        raise CheckFailed("the second thing to return is a dict of floats with the keys 'approx_kl' and 'clipfrac', "
                          "as ppo.ppo_policy_loss logs them")
    cf = float(stats["clipfrac"])
    if abs(cf - want_stats["clipfrac"]) > 1e-5:
        if abs(cf - float(((ratio - 1).abs() > eps).float().mean())) < 1e-5:
            raise CheckFailed("clipfrac counted padding positions: average over the answer tokens (the mask)")
        raise CheckFailed(f"clipfrac = {cf:.3f}, expected {want_stats['clipfrac']:.3f}: the share of answer tokens "
                          "where the clipped term is the one the max picks")
    kl = float(stats["approx_kl"])
    if abs(kl - want_stats["approx_kl"]) > 1e-5:
        logratio = x["logprobs"] - old
        if abs(kl - float(mean(-logratio))) < 1e-5 or abs(kl - float(mean(logratio))) < 1e-5:
            raise CheckFailed("approx_kl is the k3 estimate, mean((ratio - 1) - log ratio) over the answer tokens: "
                              "never negative, lower variance than the mean log-ratio")
        raise CheckFailed(f"approx_kl = {kl:.4f}, expected {want_stats['approx_kl']:.4f}: the masked mean of "
                          "(ratio - 1) - log ratio")


# --- Exercise 6.3 ---------------------------------------------------------------------------------

@check(reference=ppo.ppo_value_loss)
def check_ppo_value_loss(ppo_value_loss):
    """ppo_value_loss(values, old_values, returns, mask, cliprange_value) -> (v_loss, {vf_clipfrac})."""
    clips = draws(0.1, 0.4, 3, seed=17, avoid=(0.2,))
    for seed, eps in zip((3, 8, 9), clips):
        _value_case(ppo_value_loss, _rollout_tensors(seed), eps)
    x = _rollout_tensors(3)
    same_on_layouts(ppo_value_loss, [("values", x["values"]), ("old_values", x["old_values"]),
                                     ("returns", x["returns"]), ("mask", x["mask"]), ("cliprange_value", clips[0])],
                    expand=("returns",))
    return f"v_loss, vf_clipfrac and the gradient as in ppo.ppo_value_loss for cliprange = {', '.join(map(str, clips))}"


def _value_case(ppo_value_loss, x: dict, eps: float) -> None:
    v = x["values"].clone().requires_grad_()
    old, ret, mask = x["old_values"], x["returns"], x["mask"]
    loss, stats = _pair(call(ppo_value_loss, v, old, ret, mask, eps), "v_loss", "stats")
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CheckFailed("return the value loss as a scalar tensor")
    want, want_stats = ppo.ppo_value_loss(x["values"], old, ret, mask, eps)
    values = x["values"]
    clipped = old + torch.clamp(values - old, -eps, eps)
    mean = lambda t: ppo.masked_mean(t, mask)  # noqa: E731
    wrong = {
        "min": 0.5 * mean(torch.min((values - ret) ** 2, (clipped - ret) ** 2)),
        "unclipped": 0.5 * mean((values - ret) ** 2),
        "half": mean(torch.max((values - ret) ** 2, (clipped - ret) ** 2)),
        "around_returns": 0.5 * mean(torch.max((values - ret) ** 2,
                                               (ret + torch.clamp(values - ret, -eps, eps) - ret) ** 2)),
        "clamp_values": 0.5 * mean(torch.max((values - ret) ** 2, (torch.clamp(values, -eps, eps) - ret) ** 2)),
        "padding": 0.5 * torch.max((values - ret) ** 2, (clipped - ret) ** 2).mean(),
        "only_clipped": 0.5 * mean((clipped - ret) ** 2),
    }
    messages = {
        "min": "you took the min of the clipped and unclipped errors: the value loss takes the max (pessimistic, as "
               "the policy loss)",
        "unclipped": "there is no clipping: also compute the error of old_values + clamp(values - old_values, -eps, "
                     "eps), and take the max of the two",
        "half": "the factor 1/2 is missing: v_loss = 0.5 * mean(max(...))",
        "around_returns": "the clip is around the old values, not the returns: old_values + clamp(values - old_values, "
                          "-eps, eps)",
        "clamp_values": "clip the change of the value (values - old_values), not the value itself",
        "padding": "padding positions were counted in the mean: average over the answer tokens only (the mask)",
        "only_clipped": "you used only the clipped error: take the max of the clipped and the unclipped squared errors",
    }
    name_the_mistake(loss.detach(), want, wrong, messages, what=f"v_loss (cliprange = {eps})")
    if not loss.requires_grad:
        raise CheckFailed("v_loss has no gradient with respect to the values: do not detach it")
    loss.backward()
    v_ref = x["values"].clone().requires_grad_()
    ppo.ppo_value_loss(v_ref, old, ret, mask, eps)[0].backward()
    if v.grad is None or not same(v.grad, v_ref.grad):
        raise CheckFailed("the value is right but the gradient is not: use torch.clamp on values - old_values, and "
                          "do not detach values")
    if not isinstance(stats, dict) or "vf_clipfrac" not in stats:
        raise CheckFailed("the second thing to return is a dict with the key 'vf_clipfrac', as ppo.ppo_value_loss logs it")
    if abs(float(stats["vf_clipfrac"]) - want_stats["vf_clipfrac"]) > 1e-5:
        raise CheckFailed(f"vf_clipfrac = {float(stats['vf_clipfrac']):.3f}, expected {want_stats['vf_clipfrac']:.3f}: "
                          "the share of answer tokens where the clipped error is the larger one")


# --- Exercise 6.4: the silent bug -----------------------------------------------------------------

def _kl_setup():
    """The tiny model with a perturbed LoRA adapter (so the policy differs from its reference), and a
    batch of sampled answers laid out as PPO's rollout lays them: left-padded prompts, right-padded answers."""
    from rlhf_course import toyworld
    from rlhf_course.loading import load_policy, load_tokenizer
    from rlhf_course.profiles import pick_profile
    from rlhf_course.sampling import answer_mask, prompt_mask, sample_ids

    profile = pick_profile("tiny")
    tok = load_tokenizer(profile)
    torch.manual_seed(0)
    with quiet_loading():
        model = load_policy(profile, verbose=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.eval()
    prompts = [p.text for p in toyworld.train_prompts()[:4]]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        query, response, _ = sample_ids(model, tok, prompts, 12, temperature=1.0)
    resp = answer_mask(response, tok.eos_token_id)                                  # (B, Tr)
    input_ids = torch.cat([query, response], dim=1)                                 # (B, T)
    attention_mask = torch.cat([prompt_mask(query, tok.pad_token_id), resp], dim=1)   # (B, T)
    response_mask = torch.cat([torch.zeros_like(query), resp], dim=1)               # (B, T)
    return model, tok, query, response, input_ids, attention_mask, response_mask


def rollout_kl_reference(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         response_mask: torch.Tensor) -> torch.Tensor:
    """Exercise 6.4 fixed, from the package's pieces: log pi under the policy and under its reference
    (`loading.reference_policy`: the adapter switched off), summed over the answer's tokens. (B,)."""
    from rlhf_course.loading import reference_policy
    from rlhf_course.logprobs import completion_logprobs

    logp = completion_logprobs(model, input_ids, attention_mask, response_mask)       # (B, T-1), answer only
    with reference_policy(model):
        ref = completion_logprobs(model, input_ids, attention_mask, response_mask)
    return (logp - ref).sum(dim=1)


@check(reference=rollout_kl_reference)
def check_rollout_kl(rollout_kl):
    """rollout_kl(model, input_ids, attention_mask, response_mask) -> (B,) KL of each answer to the reference."""
    from rlhf_course.evaluation import kl_to_reference
    from rlhf_course.logprobs import completion_logprobs

    model, tok, query, response, input_ids, attention_mask, response_mask = _kl_setup()
    want, _ = kl_to_reference(model, "self", tok, query, response)       # (B,)
    ones = torch.ones_like(input_ids)
    with torch.no_grad():
        logp_all = completion_logprobs(model, input_ids, attention_mask, ones)      # (B, T-1), the policy
        got = call(rollout_kl, model, input_ids, attention_mask, response_mask)
        # the adapter must be on again afterwards: the policy keeps training
        adapter_back_on = same(completion_logprobs(model, input_ids, attention_mask, ones), logp_all)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        raise CheckFailed(f"return one KL per answer: a tensor of shape {tuple(want.shape)}")
    if got.abs().max() < 1e-6:
        raise CheckFailed("the KL is exactly 0 for a policy whose adapter has moved away from the reference: the "
                          "'reference' log-probs came from the policy itself. Compute them with the adapter "
                          "switched off (`with model.disable_adapter():`)")
    with torch.no_grad():
        with model.disable_adapter():
            ref_all = completion_logprobs(model, input_ids, attention_mask, ones)
        per_token = logp_all - ref_all                                              # (B, T-1), unmasked
    if same(got, per_token.sum(1), atol=1e-4) or same(got, (per_token * attention_mask[:, 1:]).sum(1), atol=1e-4):
        raise CheckFailed("the KL was summed over the prompt (and padding) tokens too: only the answer was sampled "
                          "from the policy, so multiply by the response mask before summing")
    if same(got, (per_token * response_mask[:, :-1]).sum(1), atol=1e-4):
        raise CheckFailed("the mask is off by one: the log-prob at position t is that of token t + 1, so use "
                          "response_mask[:, 1:]")
    if same(got, -want, atol=1e-4):
        raise CheckFailed("the KL has the wrong sign: log pi - log pi_ref (policy minus reference)")
    close(got, want, atol=1e-4, what="the KL per answer")
    if not adapter_back_on:
        raise CheckFailed("after your function the policy's adapter is still switched off: use the context manager "
                          "`with model.disable_adapter():` so it comes back on")
    return "KL(pi || pi_ref) per answer, reference = adapter off, answer tokens only"
