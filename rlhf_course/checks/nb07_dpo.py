"""Checks for notebook 7 (DPO): sequence log-probs (shift and mask), the sigmoid DPO loss with its
implicit rewards, the loss of a batch with TRL's diagnostics (reference = adapter off), and the IPO
loss. Each compares with `rlhf_course.logprobs` / `rlhf_course.dpo` (the references, with the
exercises' signatures: `beta` by keyword) on small inputs it builds itself, with several betas and
taus (none where two targets coincide, as 2 tau = 1 / (2 tau) at tau = 0.5), log-ratio gaps large
enough to break an unstable log(sigmoid), and the ties of the first step; it names the mistake when a
known wrong version matches instead, and an input changed in place is one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_course import dpo
from rlhf_course.checks.core import CheckFailed, call, check, close, draws, name_the_mistake, quiet_loading, same
from rlhf_course.logprobs import sequence_logprobs, token_logprobs


def ipo_loss_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau):
    """Exercise 7.4's reference: `dpo.dpo_loss(..., loss_type="ipo")` without lengths, Eq. 17 as printed."""
    return dpo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        beta=tau, loss_type="ipo")[0]


def _loss_inputs(seed: int = 0, B: int = 6) -> tuple[torch.Tensor, ...]:
    """Summed log-probs (B,) of chosen and rejected answers under a policy and a reference, with
    log-ratios of both signs and of different sizes (so wrong signs and misplaced betas show)."""
    g = torch.Generator().manual_seed(seed)
    ref_chosen = -torch.rand(B, generator=g) * 20 - 5           # (B,) sequences of a few tokens
    ref_rejected = -torch.rand(B, generator=g) * 20 - 5
    policy_chosen = ref_chosen + torch.randn(B, generator=g) * 2
    policy_rejected = ref_rejected + torch.randn(B, generator=g) * 2
    return policy_chosen, policy_rejected, ref_chosen, ref_rejected


def _model_and_batch(lora: bool):
    """The tiny model (with a perturbed LoRA adapter when `lora`, so the policy differs from its
    reference) and a preference batch of 3 toy-world pairs as TRL's collator lays it out: rows 0..2
    prompt+chosen, rows 3..5 prompt+rejected, right-padded, `completion_mask` on the answers."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from rlhf_course import toyworld
    from rlhf_course.loading import load_policy, load_tokenizer
    from rlhf_course.profiles import pick_profile

    profile = pick_profile("tiny")
    tok = load_tokenizer(profile)
    torch.manual_seed(0)
    with quiet_loading():
        model = load_policy(profile, lora=lora, verbose=False)
    if lora:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
    model.eval()
    rows = []
    for pair in toyworld.make_preference_pairs(3, seed=7):
        prompt_ids = tok.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
        answer = lambda msgs: tok(msgs[0]["content"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        rows.append({"prompt_ids": list(prompt_ids), "chosen_ids": answer(pair["chosen"]),
                     "rejected_ids": answer(pair["rejected"])})
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(rows)
    return model, batch


# --- Exercise 7.1 ---------------------------------------------------------------------------------

@check(reference=sequence_logprobs)
def check_sequence_logps(sequence_logps):
    """sequence_logps(model, input_ids, attention_mask, completion_mask) -> (B,) log pi(answer | prompt)."""
    model, batch = _model_and_batch(lora=False)
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        got = call(sequence_logps, model, ids, att, comp)
        want = sequence_logprobs(model, ids, att, comp)                           # (B,)
        logits = model(input_ids=ids, attention_mask=att).logits                  # (B, T, V)
        shifted = token_logprobs(logits[:, :-1], ids[:, 1:])                      # (B, T-1)
        unshifted = token_logprobs(logits, ids)                                   # (B, T)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise CheckFailed(f"return one summed log-prob per sequence, shape {tuple(want.shape)}; got {shape}")
    if same(got, want, atol=1e-4):
        return "log pi(answer | prompt): logits shifted by one, summed over the answer's tokens only"
    wrong = {
        "no_shift": (unshifted * comp).sum(1),
        "mask_not_shifted": (shifted * comp[:, :-1]).sum(1),
        "no_mask": shifted.sum(1),
        "attention_mask": (shifted * att[:, 1:]).sum(1),
        "mean": (shifted * comp[:, 1:]).sum(1) / comp[:, 1:].sum(1),
        "probs": (shifted.exp() * comp[:, 1:]).sum(1),
    }
    messages = {
        "no_shift": "the logits were not shifted: the logits at position t predict token t + 1, so compare "
                    "logits[:, :-1] with input_ids[:, 1:]",
        "mask_not_shifted": "the mask is off by one: after the shift, entry t is the log-prob of token t + 1, so use "
                            "completion_mask[:, 1:]",
        "no_mask": "you summed over the prompt and the padding too: multiply by completion_mask[:, 1:] before summing",
        "attention_mask": "you summed over the prompt tokens too (the attention mask covers them): use the "
                          "completion mask, which is 1 on the answer only",
        "mean": "you averaged over the answer's tokens: DPO uses the log-probability of the whole answer, a sum",
        "probs": "sum log-probabilities, not probabilities: log pi(y|x) = sum_t log pi(y_t | x, y_<t)",
    }
    name_the_mistake(got, want, wrong, messages, what="log pi(answer | prompt)", atol=1e-4)


# --- Exercise 7.2 ---------------------------------------------------------------------------------

@check(reference=dpo.dpo_loss)
def check_dpo_loss(dpo_loss):
    """dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta)
    -> (loss, chosen_rewards, rejected_rewards)."""
    betas = draws(0.05, 0.8, 3, seed=18, avoid=(0.1, 0.5))
    for seed, beta in zip((1, 3, 4), betas):
        _dpo_loss_case(dpo_loss, *_loss_inputs(seed), beta)
    # a pair ranked wrong by a wide gap (h = -600 nats): log(sigmoid(beta h)) underflows to log(0) = -inf
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-400.0, -10.0, -100.0, -310.0))
    loss = call(dpo_loss, pc, pr, rc, rr, beta=betas[0])[0]
    want = dpo.dpo_loss(pc, pr, rc, rr, beta=betas[0])[0]
    if not torch.isfinite(torch.as_tensor(loss)).all():
        raise CheckFailed(f"a pair whose log-ratios differ by 600 nats gives an infinite loss: -log(sigmoid(x)) "
                          f"underflows to -log(0) - use -F.logsigmoid(x), which is stable (expected {want.item():.1f})")
    close(loss.detach(), want, what="the loss of a pair ranked wrong by 600 nats")
    return (f"DPO Eq. 7 for beta = {', '.join(map(str, betas))}, stable at a 600-nat gap; implicit rewards "
            "beta * log pi/pi_ref; gradients as dpo.dpo_loss")


def _dpo_loss_case(dpo_loss, pc, pr, rc, rr, beta) -> None:
    pc_g, pr_g = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    out = call(dpo_loss, pc_g, pr_g, rc, rr, beta=beta)
    if not (isinstance(out, tuple) and len(out) == 3):
        raise CheckFailed("return three things: (loss, chosen_rewards, rejected_rewards)")
    loss, chosen_rewards, rejected_rewards = out
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CheckFailed("the loss should be a scalar tensor: the mean over the batch of pairs")
    want, want_chosen, want_rejected = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    lc, lr = pc - rc, pr - rr                                                  # (B,) log-ratios
    wrong = {
        "beta_outside": (-beta * F.logsigmoid(lc - lr)).mean(),
        "no_beta": (-F.logsigmoid(lc - lr)).mean(),
        "ref_sign": (-F.logsigmoid(beta * ((pc + rc) - (pr + rr)))).mean(),
        "no_ref": (-F.logsigmoid(beta * (pc - pr))).mean(),
        "swapped": (-F.logsigmoid(beta * (lr - lc))).mean(),
        "no_log": (-torch.sigmoid(beta * (lc - lr))).mean(),
        "sum": (-F.logsigmoid(beta * (lc - lr))).sum(),
        "plus_log": F.logsigmoid(beta * (lc - lr)).mean(),
        "fixed_beta": (-F.logsigmoid(0.1 * (lc - lr))).mean(),
    }
    messages = {
        "beta_outside": "beta is outside the sigmoid: it scales the log-ratio gap inside it, "
                        "-log sigmoid(beta * (chosen log-ratio - rejected log-ratio))",
        "no_beta": "beta is missing: the logits are beta * (chosen log-ratio - rejected log-ratio)",
        "ref_sign": "the reference log-probs were added, not subtracted: the log-ratio is log pi - log pi_ref",
        "no_ref": "the reference is missing: DPO compares log-RATIOS, log pi(y|x) - log pi_ref(y|x)",
        "swapped": "chosen and rejected are swapped: the loss must fall when the chosen answer gains probability",
        "no_log": "take the log of the sigmoid: the loss is the negative log-likelihood, -log sigmoid(...)",
        "sum": "average over the batch of pairs (mean), do not sum",
        "plus_log": "the sign of the loss is flipped: minimise -log sigmoid(...), the negative log-likelihood",
        "fixed_beta": "beta is fixed at 0.1: use the `beta` you are given",
    }
    name_the_mistake(loss.detach(), want, wrong, messages, what=f"the DPO loss (beta = {beta})")
    for name, got, ref in (("chosen_rewards", chosen_rewards, want_chosen), ("rejected_rewards", rejected_rewards,
                                                                            want_rejected)):
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(ref.shape):
            raise CheckFailed(f"{name} should be one implicit reward per pair, shape {tuple(ref.shape)}")
        log_ratio = lc if name == "chosen_rewards" else lr
        if same(got.detach(), log_ratio):
            raise CheckFailed(f"{name} is missing beta: the implicit reward is beta * (log pi - log pi_ref)")
        close(got.detach(), ref, what=name + " (beta * (log pi - log pi_ref))")
        if got.requires_grad:
            raise CheckFailed(f"detach {name}: they are diagnostics to log, and must not carry gradients")
    if not loss.requires_grad:
        raise CheckFailed("the loss has no gradient: do not detach the policy's log-probs inside the loss")
    loss.backward()
    pc_r, pr_r = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    dpo.dpo_loss(pc_r, pr_r, rc, rr, beta=beta)[0].backward()
    if pc_g.grad is None or pr_g.grad is None or not (same(pc_g.grad, pc_r.grad) and same(pr_g.grad, pr_r.grad)):
        raise CheckFailed("the value is right but the gradient is not: compute everything from the inputs with "
                          "torch operations (no .item() or .detach() on the policy's log-probs)")


# --- Exercise 7.3 ---------------------------------------------------------------------------------

LOGGED_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


@check(reference=dpo.dpo_batch_loss)
def check_dpo_batch_loss(dpo_batch_loss):
    """dpo_batch_loss(model, batch, *, beta) -> (loss, metrics) with metrics rewards/chosen, rewards/rejected,
    rewards/accuracies, rewards/margins (batch means, floats)."""
    model, batch = _model_and_batch(lora=True)
    betas = draws(0.2, 2.0, 2, seed=19, avoid=(0.5, 1.0))
    for beta in betas:
        _batch_case(dpo_batch_loss, model, batch, beta, moved=True)
    # the first step: a fresh adapter (B = 0) is the reference itself, every implicit reward is exactly 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    _batch_case(dpo_batch_loss, model, batch, betas[0], moved=False)
    return ("loss and rewards/chosen, rejected, accuracies, margins as dpo.dpo_batch_loss (reference = adapter off) "
            f"for beta = {', '.join(map(str, betas))}, and at the first step, where every pair ties")


def _batch_case(dpo_batch_loss, model, batch, beta: float, moved: bool) -> None:
    model.zero_grad()
    out = call(dpo_batch_loss, model, batch, beta=beta)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise CheckFailed("return (loss, metrics), metrics a dict")
    loss, metrics = out
    missing = [k for k in LOGGED_METRICS if k not in metrics]
    if missing:
        raise CheckFailed(f"metrics lacks {missing}: log what TRL logs, under the same names")
    want, want_metrics = dpo.dpo_batch_loss(model, batch, beta=beta)
    got = {k: float(metrics[k]) for k in LOGGED_METRICS}
    if moved and abs(got["rewards/margins"]) < 1e-7 and abs(want_metrics["rewards/margins"]) > 1e-4:
        raise CheckFailed("the margins are exactly 0: the reference log-probs came from the policy itself. Compute "
                          "them with the LoRA adapter switched off (`with model.disable_adapter():`) - the policy "
                          "we started from")
    loss_value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if abs(loss_value - want.item()) > 1e-4:
        raise CheckFailed(f"loss {loss_value:.4f}, expected {want.item():.4f} (beta = {beta}): use sequence_logps on "
                          "the 2B rows, split them into chosen (first half) and rejected (second half), and dpo_loss")
    if not moved and abs(got["rewards/accuracies"] - 1.0) < 1e-6:
        raise CheckFailed("rewards/accuracies counts ties as right: at the first step the policy is the reference, "
                          "every implicit reward is 0 and TRL logs an accuracy of 0 - count chosen > rejected "
                          "(strictly), not >=")
    if abs(got["rewards/accuracies"] - (1 - want_metrics["rewards/accuracies"])) < 1e-6 \
            and abs(got["rewards/accuracies"] - want_metrics["rewards/accuracies"]) > 1e-6:
        raise CheckFailed("rewards/accuracies counts the wrong way round: the share of pairs where the chosen "
                          "answer's implicit reward is higher than the rejected one's")
    if abs(want_metrics["rewards/margins"]) > 1e-6 and abs(got["rewards/margins"] + want_metrics["rewards/margins"]) < 1e-6:
        raise CheckFailed("rewards/margins has the wrong sign: chosen reward minus rejected reward")
    for key in LOGGED_METRICS:
        if abs(got[key] - want_metrics[key]) > 1e-4:
            raise CheckFailed(f"{key} = {got[key]:.4f}, expected {want_metrics[key]:.4f} (the mean over the batch)")
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        raise CheckFailed("the loss has no gradient: only the reference's log-probs are computed without gradients")
    loss.backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b):
        raise CheckFailed("no gradient reached the LoRA adapter: the policy's log-probs must keep their graph")
    model.zero_grad()


# --- Exercise 7.4 ---------------------------------------------------------------------------------

@check(reference=ipo_loss_reference)
def check_ipo_loss(ipo_loss):
    """ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau) -> loss."""
    taus = draws(0.05, 2.0, 3, seed=20, avoid=(0.5, 1.0, 0.7071))   # where 1/(2 tau) meets 2 tau, tau / 2, 1 / tau
    for seed, tau in zip((2, 5, 6), taus):
        _ipo_case(ipo_loss, *_loss_inputs(seed), tau)
    return (f"IPO Eq. 17 for tau = {', '.join(map(str, taus))}, as dpo.dpo_loss(loss_type='ipo') without length "
            "normalisation")


def _ipo_case(ipo_loss, pc, pr, rc, rr, tau) -> None:
    pc_g = pc.clone().requires_grad_()
    loss = call(ipo_loss, pc_g, pr, rc, rr, tau)
    if isinstance(loss, tuple):
        loss = loss[0]
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CheckFailed("return the IPO loss as a scalar tensor (the mean over the pairs)")
    want = ipo_loss_reference(pc, pr, rc, rr, tau)                                # Eq. 17, no length normalisation
    h = (pc - rc) - (pr - rr)                                                   # (B,)
    wrong = {
        "one_over_tau": ((h - 1 / tau) ** 2).mean(),
        "two_tau": ((h - 2 * tau) ** 2).mean(),
        "tau_half": ((h - tau / 2) ** 2).mean(),
        "plus": ((h + 1 / (2 * tau)) ** 2).mean(),
        "not_squared": (h - 1 / (2 * tau)).abs().mean(),
        "no_ref": (((pc - pr) - 1 / (2 * tau)) ** 2).mean(),
        "sigmoid": (-F.logsigmoid(tau * h)).mean(),
        "sum": ((h - 1 / (2 * tau)) ** 2).sum(),
    }
    messages = {
        "one_over_tau": "the target gap is 1 / (2 tau), not 1 / tau",
        "two_tau": "the target gap is 1 / (2 tau), not 2 tau",
        "tau_half": "the target gap is 1 / (2 tau), not tau / 2",
        "plus": "the sign of the target is flipped: (h - 1 / (2 tau))^2 pulls the gap h up to +1 / (2 tau)",
        "not_squared": "square the difference: IPO is a regression, (h - 1 / (2 tau))^2",
        "no_ref": "h is the gap of LOG-RATIOS: (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))",
        "sigmoid": "that is DPO's loss: IPO replaces -log sigmoid(beta h) with the squared loss (h - 1 / (2 tau))^2",
        "sum": "average over the pairs (mean), do not sum",
    }
    name_the_mistake(loss.detach(), want, wrong, messages, what=f"the IPO loss (tau = {tau})")
    if not loss.requires_grad:
        raise CheckFailed("the loss has no gradient: do not detach the policy's log-probs")
