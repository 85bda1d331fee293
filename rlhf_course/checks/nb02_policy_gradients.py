"""Checks for notebook 2 (policy gradients): the REINFORCE loss, advantage whitening, GAE, and the
log-probability of a sequence. Each builds small seeded inputs, compares with the package function that
is the exercise's reference (`policy_gradient.reinforce_loss`, `ppo.masked_whiten`, `ppo.compute_gae`,
`logprobs.sequence_logprob`) for several parameter values, with views and expanded tensors, extreme
logits and constant advantages, and names the likely mistake; an input changed in place is one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_course.checks.core import CheckFailed, call, check, close, draws, same_on_layouts
from rlhf_course.logprobs import sequence_logprob as reference_sequence_logprob
from rlhf_course.logprobs import sequence_logprobs
from rlhf_course.policy_gradient import reinforce_loss as reference_reinforce_loss
from rlhf_course.ppo import compute_gae, masked_mean, masked_whiten


def _matches(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> bool:
    return got.shape == want.shape and torch.allclose(got.double(), want.double(), atol=atol, rtol=1e-4)


def _padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    """(B, T) float mask: 1 on the first `length` positions of each row (right padding)."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()


# --- REINFORCE ------------------------------------------------------------------------------------

@check(reference=reference_reinforce_loss)
def check_reinforce_loss(reinforce_loss):
    """reinforce_loss(logprobs (B,), returns (B,), baseline: float or (B,)) -> scalar loss."""
    gen = torch.Generator().manual_seed(0)
    B = 8
    logits = torch.randn(B, 5, generator=gen)
    actions = torch.randint(0, 5, (B,), generator=gen)
    for offset in draws(1.0, 5.0, 2, seed=6):
        returns = offset + torch.randn(B, generator=gen)
        for baseline in (offset - 0.5, offset + 0.5 * torch.randn(B, generator=gen)):
            leaf = logits.clone().requires_grad_(True)
            logprobs = F.log_softmax(leaf, dim=-1)[torch.arange(B), actions]           # (B,)
            loss = call(reinforce_loss, logprobs, returns, baseline)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise CheckFailed("return one number: a 0-dimensional tensor (take the mean over the batch)")
            want = reference_reinforce_loss(logprobs, returns, baseline)
            got = loss.detach()
            if _matches(got, -want):
                raise CheckFailed("the sign is wrong: the optimiser minimises, so the loss is -(G - b) * log pi "
                                  "(descending it climbs the expected return)")
            if _matches(got, reference_reinforce_loss(logprobs, returns, 0.0)):
                raise CheckFailed("the baseline was not subtracted: weight each log pi by (G - b), not by G")
            if _matches(got, want * B):
                raise CheckFailed("you summed over the batch: take the mean, so the step size does not grow with B")
            if not _matches(got, want):
                raise CheckFailed(f"loss = {got.item():.4f}, expected -mean((G - b) * log pi) = {want.item():.4f}")
            grad = torch.autograd.grad(loss, leaf, retain_graph=True, allow_unused=True)[0] if loss.requires_grad \
                else None
            if grad is None:
                raise CheckFailed("the loss has no gradient reaching the policy: build it from `logprobs` with torch "
                                  "operations (a .detach(), .item() or torch.tensor(...) on them cuts the graph)")
            want_grad, = torch.autograd.grad(want, leaf)
            close(grad, want_grad, atol=1e-5, what="the gradient of your loss")
    # A learned baseline (a value estimate) must not be trained by the policy loss.
    value = torch.full((B,), 2.0, requires_grad=True)
    logprobs = F.log_softmax(logits.clone().requires_grad_(True), dim=-1)[torch.arange(B), actions]
    call(reinforce_loss, logprobs, returns, value).backward()
    if value.grad is not None and value.grad.abs().max() > 0:
        raise CheckFailed("the baseline receives gradients: detach (G - b), the weight is a constant for the "
                          "policy's update (a value function is trained by its own loss)")
    return "-mean((G - b) * log pi): right value, right gradient, no gradient into the baseline"


# --- whitening advantages -------------------------------------------------------------------------

def _whiten_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = _padded_mask([7, 3, 5, 1], 7)
    x = 2.0 + 3.0 * torch.randn(4, 7, generator=gen)
    x = torch.where(mask.bool(), x, torch.full_like(x, 40.0))  # loud padding: it must not count
    return x, mask


@check(reference=masked_whiten)
def check_masked_whiten(masked_whiten_fn):
    """masked_whiten(x (B, T), mask (B, T)) -> (B, T): mean 0, std 1 over the real entries, 0 on padding."""
    for seed in range(3):
        x, mask = _whiten_inputs(seed)
        _whiten_case(masked_whiten_fn, x, mask)
    # every real entry equal (e.g. all answers got the same reward): the std is 0, the result must be 0, not NaN
    constant = torch.where(mask.bool(), torch.full_like(x, 1.5), torch.full_like(x, 40.0))
    got = call(masked_whiten_fn, constant, mask)
    if not torch.isfinite(got).all() or got.abs().max() > 1e-3:
        raise CheckFailed("when every real entry is the same (std 0) the whitened values must be 0, not NaN or inf: "
                          "add a small epsilon to the variance before the square root (1e-8)")
    same_on_layouts(masked_whiten_fn, [("x", x), ("mask", mask)], expand=("x",), atol=1e-4)
    return "mean 0 and std 1 over the real tokens of the whole batch; padding ignored and zeroed; std 0 gives 0"


def _whiten_case(masked_whiten_fn, x, mask) -> None:
    got = call(masked_whiten_fn, x, mask)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        raise CheckFailed(f"return a tensor of the input's shape {tuple(x.shape)}")
    want = masked_whiten(x, mask)
    real = mask.bool()
    n = mask.sum()
    unbiased = (x - masked_mean(x, mask)) / torch.sqrt(masked_mean((x - masked_mean(x, mask)) ** 2, mask) * n / (n - 1))
    if _matches(got[real], want[real], atol=1e-4) or _matches(got[real], unbiased[real], atol=1e-4):
        if got[~real].abs().max() > 1e-6:
            raise CheckFailed("padding positions should be 0 after whitening (multiply by the mask), so a "
                              "padded token carries no advantage")
        return
    everything = (x - x.mean()) / x.std()
    if _matches(got[real], everything[real], atol=1e-3) or _matches(got[real], ((x - x.mean()) / x.std(unbiased=False))[real], 1e-3):
        raise CheckFailed("padding was not masked: the mean and the std must be taken over the real tokens only")
    long_rows = mask.sum(dim=1) > 1
    row_means = masked_mean(torch.nan_to_num(got.double()), mask.double(), dim=1)
    if row_means[long_rows].abs().max() < 1e-4:
        raise CheckFailed("whiten over the whole batch (all real tokens together), not each row on its own")
    if got[real].isnan().any():
        raise CheckFailed("your output has NaN on real tokens (a std of 0? whiten over the whole batch)")
    if _matches(got[real], (x - masked_mean(x, mask))[real], atol=1e-4):
        raise CheckFailed("you subtracted the mean but did not divide by the standard deviation")
    if _matches(got[real], (x / torch.sqrt(masked_mean((x - masked_mean(x, mask)) ** 2, mask)))[real], atol=1e-4):
        raise CheckFailed("you divided by the standard deviation but did not subtract the mean")
    mean, std = got[real].mean().item(), got[real].std(unbiased=False).item()
    raise CheckFailed(f"over the real tokens your output has mean {mean:.3f} and std {std:.3f}; expected 0 and 1")


# --- GAE ------------------------------------------------------------------------------------------

def _gae_variant(rewards, values, mask, gamma, lam, *, mask_values=True, mask_adv=True):
    """The reference recursion with one detail switchable, to name the mistake a result matches."""
    v = values * mask if mask_values else values
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = v[:, t + 1] if t + 1 < T else torch.zeros_like(v[:, 0])
        delta = rewards[:, t] + gamma * next_value - v[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    if mask_adv:
        adv = adv * mask
    return adv, adv + v


def _forward_gae(rewards, values, mask, gamma, lam):
    """A common slip: the recursion run forwards in time."""
    v = values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in range(T):
        next_value = v[:, t + 1] if t + 1 < T else torch.zeros_like(v[:, 0])
        last = rewards[:, t] + gamma * next_value - v[:, t] + gamma * lam * last
        adv[:, t] = last
    return adv * mask


@check(reference=compute_gae)
def check_compute_gae(compute_gae_fn):
    """compute_gae(rewards, values, mask, gamma, lam) -> (advantages, returns), each (B, T)."""
    gen = torch.Generator().manual_seed(0)
    mask = _padded_mask([6, 4, 2, 5], 6)
    rewards = torch.randn(4, 6, generator=gen) * mask
    values = torch.randn(4, 6, generator=gen) + 0.5   # nonzero on padding too: a value head predicts there anyway
    gammas = draws(0.6, 0.99, 3, seed=7)
    lams = draws(0.3, 0.9, 3, seed=8, avoid=gammas + [1 - g for g in gammas])
    for gamma, lam in zip(gammas, lams):
        _gae_case(compute_gae_fn, rewards, values, mask, gamma, lam)
    # the two ends of the trade-off, as the notebook's derivation says
    for lam_, name in ((0.0, "lambda = 0"), (1.0, "lambda = 1")):
        got0, _ = call(compute_gae_fn, rewards, values, mask, 1.0, lam_)
        close(got0 * mask, compute_gae(rewards, values, mask, 1.0, lam_)[0], atol=1e-5, what=f"advantages at {name}")
    same_on_layouts(compute_gae_fn, [("rewards", rewards), ("values", values), ("mask", mask),
                                                   ("gamma", gammas[0]), ("lam", lams[0])], expand=("values",),
                    compare=lambda got, want: _matches(got[0], want[0]) and _matches(got[1], want[1]))
    pairs = ", ".join(f"({g}, {l})" for g, l in zip(gammas, lams))
    return f"matches rlhf_course.ppo.compute_gae for (gamma, lambda) = {pairs}, 0 and 1; padding masked"


def _gae_case(compute_gae_fn, rewards, values, mask, gamma, lam) -> None:
    out = call(compute_gae_fn, rewards, values, mask, gamma, lam)
    if not isinstance(out, tuple) or len(out) != 2:
        raise CheckFailed("return a pair (advantages, returns)")
    adv, ret = out
    want_adv, want_ret = compute_gae(rewards, values, mask, gamma, lam)
    if not isinstance(adv, torch.Tensor) or adv.shape != want_adv.shape:
        raise CheckFailed(f"advantages should have shape {tuple(want_adv.shape)} (B, T)")
    real = mask.bool()
    if not _matches(adv[real], want_adv[real], atol=1e-5):
        if values[~real].abs().max() > 0:  # the same batch with 0 on padding: right there means padding leaked in
            clean = call(compute_gae_fn, rewards, values * mask, mask, gamma, lam)
            if isinstance(clean, tuple) and _matches(clean[0][real], want_adv[real], atol=1e-5):
                raise CheckFailed("bootstrapped from a padded position: right when the value head predicts 0 on "
                                  "padding, wrong otherwise - the value after an answer's last token must be 0: "
                                  "mask the values (values * mask) before using V(s_{t+1})")
        candidates = [
            (_gae_variant(rewards, values, mask, gamma, lam, mask_values=False)[0],
             "bootstrapped from a padded position: the value after an answer's last token must be 0 - "
             "mask the values (values * mask) before using V(s_{t+1})"),
            (_gae_variant(rewards, values, mask, lam, gamma)[0], "lambda and gamma are swapped: delta_t uses gamma, "
                                                                  "and the sum decays by gamma * lambda"),
            (_gae_variant(rewards, values, mask, 1.0, lam)[0], "gamma is missing (in delta_t or in the decay gamma * lambda)"),
            (_gae_variant(rewards, values, mask, gamma, 1.0)[0], "lambda is missing: the sum of TD errors decays by gamma * lambda"),
            (_gae_variant(rewards, values, mask, gamma, 0.0)[0], "you returned the one-step TD errors delta_t (that is "
                                                                  "GAE with lambda = 0): accumulate them backwards"),
            (_forward_gae(rewards, values, mask, gamma, lam), "the recursion runs forwards: go backwards in time, "
                                                              "A_t = delta_t + gamma * lambda * A_{t+1}"),
        ]
        for wrong, message in candidates:
            if _matches(adv[real], wrong[real], atol=1e-5):
                raise CheckFailed(message)
        worst = (adv - want_adv)[real].abs().max().item()
        raise CheckFailed(f"advantages differ from rlhf_course.ppo.compute_gae by up to {worst:.3g} on real tokens "
                          f"(gamma = {gamma}, lambda = {lam})")
    if adv[~real].abs().max() > 1e-6:
        raise CheckFailed("advantages must be 0 on padding (multiply by the mask): padded tokens are not actions")
    if not isinstance(ret, torch.Tensor) or ret.shape != want_ret.shape:
        raise CheckFailed(f"returns should have shape {tuple(want_ret.shape)} (B, T)")
    if _matches(ret[real], adv[real], atol=1e-5):
        raise CheckFailed("returns = advantages + values (the lambda-return, the value head's target); you "
                          "returned the advantages")
    if _matches(ret[real], (adv + values)[real], atol=1e-5) and not _matches(ret[~real], want_ret[~real]):
        raise CheckFailed("returns on padding should be 0: add the masked values (values * mask)")
    close(ret, want_ret, atol=1e-5, what="returns")


# --- log-probability of a sequence ----------------------------------------------------------------

def _seq_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, T, V = 3, 9, 11
    logits = 2.0 * torch.randn(B, T, V, generator=gen)
    input_ids = torch.randint(0, V, (B, T), generator=gen)
    completion_mask = torch.zeros(B, T, dtype=torch.long)
    for b, (start, end) in enumerate([(3, 9), (5, 8), (2, 6)]):  # prompt first, padding after some answers
        completion_mask[b, start:end] = 1
    return logits, input_ids, completion_mask


@check(reference=reference_sequence_logprob)
def check_sequence_logprob(sequence_logprob):
    """sequence_logprob(logits (B, T, V), input_ids (B, T), completion_mask (B, T)) -> (B,)."""
    logits, input_ids, completion_mask = _seq_inputs()
    got = call(sequence_logprob, logits, input_ids, completion_mask)
    want = reference_sequence_logprob(logits, input_ids, completion_mask)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise CheckFailed(f"return one log-probability per sequence, shape {tuple(want.shape)} (B,), got {shape}")
    if not _matches(got, want, atol=1e-4):
        logp = F.log_softmax(logits, dim=-1)
        gathered = logp.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)                 # (B, T), no shift
        shifted = logp[:, :-1].gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        m = completion_mask.float()
        candidates = [
            ((gathered * m).sum(1), "off by one: the logits at position t predict token t+1 - compare "
                                    "logits[:, :-1] with input_ids[:, 1:]"),
            (shifted.sum(1), "you summed over the prompt tokens too: multiply by the completion mask"),
            ((shifted * m[:, :-1]).sum(1), "the mask is not shifted like the tokens: token t+1 is in the answer "
                                           "when completion_mask[:, 1:] is 1"),
            ((shifted * m[:, 1:]).sum(1) / m[:, 1:].sum(1), "sum the log-probs (the log of a product of "
                                                            "probabilities), do not average them"),
            ((logits[:, :-1].gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1) * m[:, 1:]).sum(1),
             "you gathered raw logits: take log_softmax over the vocabulary first"),
            ((logp[:, :-1].exp().gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1) * m[:, 1:]).sum(1),
             "you summed probabilities: take the log (log_softmax), then sum"),
        ]
        for wrong, message in candidates:
            if _matches(got, wrong, atol=1e-4):
                raise CheckFailed(message)
        raise CheckFailed(f"log-probs differ from the reference by up to {(got - want).abs().max().item():.3g}")
    # gradients must flow: REINFORCE differentiates this
    leaf = logits.clone().requires_grad_(True)
    out = call(sequence_logprob, leaf, input_ids, completion_mask)
    if not out.requires_grad:
        raise CheckFailed("no gradient flows to the logits (did you detach or use .item()?)")
    # a confident model: logits of a few hundred, where softmax underflows to 0 for every other token
    sharp = 300.0 * logits
    got = call(sequence_logprob, sharp, input_ids, completion_mask)
    if not torch.isfinite(got).all():
        raise CheckFailed("with large logits (a confident model) your log-probs are -inf or NaN: log(softmax(x)) "
                          "underflows to log(0) - use log_softmax, which is computed stably")
    close(got, reference_sequence_logprob(sharp, input_ids, completion_mask), atol=1e-2,
          what="the log-probs with large logits")
    same_on_layouts(sequence_logprob,
                    [("logits", logits), ("input_ids", input_ids), ("completion_mask", completion_mask)],
                    expand=("logits",), atol=1e-4)
    # and on a real model: the same as rlhf_course.logprobs.sequence_logprobs
    from rlhf_course.paths import data_path
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(data_path("tiny")), dtype=torch.float32)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=gen)
    attn = torch.ones_like(ids)
    cmask = torch.zeros_like(ids)
    cmask[:, 6:] = 1
    with torch.no_grad():
        mine = call(sequence_logprob, model(input_ids=ids, attention_mask=attn).logits, ids, cmask)
        ref = sequence_logprobs(model, ids, attn, cmask)
    close(mine, ref, atol=1e-4, what="on the tiny model, your log pi(answer | prompt)")
    return "sum over the answer's tokens of log_softmax(logits)[t] at token t+1; matches rlhf_course.logprobs"
