# %% [markdown]
# # 6. PPO: reinforcement learning against a reward model
#
# Notebook 5 turned preferences into a reward model $r_\phi(x, y)$. Now we optimise the SFT policy
# against it with **PPO**, the algorithm of InstructGPT and of the first ChatGPT. You will derive the
# objective, write its four critical lines yourself, find a silent bug, run the course's PPO trainer
# (`rlhf_course.ppo`, one file written CleanRL-style: TRL removed its PPO trainer), and watch the
# classic failure of RLHF happen: **reward hacking**, and the KL penalty that holds it back.
#
# **Learning goals**
# - state the RLHF objective $\mathbb{E}[r] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})$ and turn it into
#   per-token rewards (Ziegler et al. 2019), with the reward model's score on the last token;
# - derive PPO's clipped surrogate from the policy gradient (importance ratio, clipping, and why the
#   min; Schulman et al. 2017, Eq. 7), and the clipped value loss;
# - implement `compute_rewards`, `ppo_policy_loss`, `ppo_value_loss`, and find the silent bug in a KL
#   estimate;
# - know the implementation details that make PPO work on language models (reward normalisation,
#   missing-EOS penalty, advantage whitening, the reference as the model with its adapter switched off);
# - train PPO, read its curves (score, ground truth, KL, clip fraction) and evaluate it against the SFT
#   model (win rate, KL);
# - see reward hacking with numbers: a length-biased reward model's score climbs while the ground truth
#   falls, and the KL penalty limits the damage;
# - know what the 7B run needs: one 4-bit base carrying the policy adapter, a value head and the reward
#   adapter.
#
# **Prerequisites**: notebook 2 (policy gradients, advantages, GAE) and notebook 5 (the reward model).
# The SFT model and the reward models load from `rlhf_course.trained_models`: nothing to retrain.
#
# **Estimated time**: 75 minutes to work through. The notebook runs in about 2 minutes on a laptop CPU
# (tiny profile).

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import warnings

import matplotlib.pyplot as plt
import torch
from transformers.utils import logging as hf_logging

from rlhf_course import gpu_memory, plots, ppo, trained_models
from rlhf_course.checks.nb06_ppo import (check_compute_rewards, check_ppo_policy_loss, check_ppo_value_loss,
                                         check_rollout_kl)
from rlhf_course.evaluation import best_possible_reward, evaluate_policy, prompts_for, protocol
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import free_memory, load_tokenizer, reference_policy
from rlhf_course.logprobs import token_logprobs
from rlhf_course.reward_hacking import reward_hacking_curves, summarize_hacking

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=DeprecationWarning)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


# %% [markdown]
# ## 1. The RLHF objective, and where the reward lands
#
# We want a policy $\pi$ whose answers the reward model likes, **without** drifting far from the SFT
# model $\pi_{\mathrm{ref}}$ we started from (the reward model was only trained on answers like its
# answers; far away, its scores mean little). InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, Eq. 2)
# and Ziegler et al. (2019, arXiv:1909.08593, Eq. 2) maximise
#
# $$J(\pi) = \mathbb{E}_{x \sim D,\; y \sim \pi(\cdot \mid x)}\big[r_\phi(x, y)\big] \;-\; \beta\, \mathbb{E}_{x \sim D}\Big[\mathrm{KL}\big(\pi(\cdot \mid x) \,\big\|\, \pi_{\mathrm{ref}}(\cdot \mid x)\big)\Big].$$
#
# An answer is a sequence of tokens $y = (y_1, \dots, y_T)$, and the KL of sequences splits into tokens:
#
# $$\mathrm{KL}\big(\pi \,\|\, \pi_{\mathrm{ref}}\big) = \mathbb{E}_{y \sim \pi}\Big[\log \frac{\pi(y \mid x)}{\pi_{\mathrm{ref}}(y \mid x)}\Big] = \mathbb{E}_{y \sim \pi}\Big[\sum_{t=1}^{T} \underbrace{\log \pi(y_t \mid x, y_{<t}) - \log \pi_{\mathrm{ref}}(y_t \mid x, y_{<t})}_{k_{1,t}}\Big].$$
#
# So, on a sampled answer, $J$ is the expected sum of **per-token rewards**
#
# $$r_t = -\beta\, k_{1,t} \;+\; \mathbb{1}[t = T]\; r_\phi(x, y).$$
#
# This is an ordinary episodic RL problem (notebook 1): the state is the prompt plus the tokens so far,
# the action is the next token, the episode ends with `<|end|>`. The reward model speaks once, when the
# answer ends; the KL penalty speaks at every token, and charges each token for how much more likely the
# policy made it than the reference did. $k_1$ is one sample's estimate of the KL: it can be negative on
# a single token, but its expectation under $\pi$ is the KL, which is never negative.

# %% [markdown]
# ### Exercise 6.1 — per-token rewards with the KL penalty
# Difficulty ●○○ · importance: high (every RLHF-with-PPO implementation has this function) · about 10 minutes.
#
# Implement `compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)`. Inputs: `scores` (B,), the
# reward model's score of each whole answer; `logprobs` and `ref_logprobs` (B, T), the log-probabilities
# of the sampled tokens under $\pi$ and $\pi_{\mathrm{ref}}$; `mask` (B, T), 1 on each answer's tokens
# (right-padded: shorter answers end with zeros). Return `(rewards, kl)`, both (B, T): `kl` is $k_{1,t}$
# on the answer tokens (0 on padding); `rewards` is $-\beta\, k_{1,t}$, plus the score on **each answer's
# last real token**.
#
# *Checked by* `check_compute_rewards`: compares with `rlhf_course.ppo.compute_rewards` (same signature and
# return) on random answers of different lengths, for three values of `kl_coef`.
#
# **Mistakes the check names**: the KL with the wrong sign; the score on every token, on the first token,
# in the last column (padding for short answers), or one past the answer's end; the score **replacing** the
# last token's KL term instead of adding to it; `kl_coef` missing; the score missing; padding left in
# `kl`; an input changed in place (`logprobs -= ref_logprobs`: PPO reuses these tensors).
#
# <details><summary>Hint 2 (four lines)</summary>
#
# `kl = (logprobs - ref_logprobs) * mask`; `rewards = -kl_coef * kl`; `last = mask.sum(dim=1).long() - 1` is
# each answer's last real token; `rewards[torch.arange(B), last] += scores`.
#
# </details>

# %%
def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * (log pi - log pi_ref), plus the score on each answer's last token.
    scores (B,); logprobs, ref_logprobs, mask (B, T). Returns (rewards (B, T), kl (B, T))."""
    assert logprobs.shape == ref_logprobs.shape == mask.shape and scores.shape == (logprobs.shape[0],)
    # SOLUTION
    # HINT the penalty lands on every answer token, the score on one token per row: which one, and where is it?
    kl = (logprobs - ref_logprobs) * mask                       # (B, T) k1, zero on padding
    rewards = -kl_coef * kl                                     # (B, T)
    last = mask.sum(dim=1).long() - 1                           # (B,) index of each answer's last token
    rewards[torch.arange(len(scores)), last] += scores          # the score arrives when the answer ends
    return rewards, kl
    # END SOLUTION


# %%
compute_rewards = check_compute_rewards(compute_rewards)

# %% [markdown]
# Here is what the package's version (the one `PPOTrainer` uses) makes of two answers, one of 4 tokens
# with score +1 and one of 2 tokens with score -0.5, with a policy that made every token 0.5 nats more
# likely than the reference did:

# %%
mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])           # (2, 4): the second answer is 2 tokens long
logprobs = torch.full((2, 4), -1.0) * mask                    # log pi(y_t)
ref_logprobs = torch.full((2, 4), -1.5) * mask                # log pi_ref(y_t): 0.5 nats lower
rewards, kl = ppo.compute_rewards(torch.tensor([1.0, -0.5]), logprobs, ref_logprobs, mask, kl_coef=0.1)
print("kl per token:\n", kl)
print("rewards per token:\n", rewards)

# %% [markdown]
# ## 2. Advantages: GAE, once more
#
# Notebook 2 derived generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438, Eq. 16).
# A **value head** on the policy's last hidden state predicts $V(s_t)$, the reward still to come from
# token $t$ on. From the per-token rewards:
#
# $$\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t), \qquad \hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l\, \delta_{t+l}, \qquad \hat R_t = \hat A_t + V(s_t).$$
#
# $\hat A_t$ says how much better token $t$ turned out than the value head expected; $\hat R_t$ is the
# value head's regression target. Within one answer there is no reason to discount: `PPOConfig` uses
# $\gamma = 1$, $\lambda = 0.95$. With a value head that knows nothing yet ($V = 0$), the advantages of
# the two answers above are their rewards-to-go, slightly discounted by $\lambda$:

# %%
advantages, returns = ppo.compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=0.95)
print("advantages:\n", advantages.round(decimals=3))

# %% [markdown]
# ## 3. PPO-clip, derived
#
# **Start from the policy gradient** (notebook 2): $\nabla_\theta J = \mathbb{E}_{\pi_\theta}\big[\nabla_\theta \log \pi_\theta(a_t \mid s_t)\, \hat A_t\big]$.
# Sampling answers from a language model is the expensive part, so we want to take **several gradient
# steps on one batch of samples**. After the first step, though, the samples come from an older policy
# $\pi_{\theta_{\mathrm{old}}}$. Importance sampling corrects for that:
#
# $$L^{\mathrm{CPI}}(\theta) = \mathbb{E}_{\pi_{\theta_{\mathrm{old}}}}\big[\rho_t(\theta)\, \hat A_t\big], \qquad \rho_t(\theta) = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\theta_{\mathrm{old}}}(a_t \mid s_t)} = \exp\big(\log \pi_\theta - \log \pi_{\theta_{\mathrm{old}}}\big).$$
#
# At $\theta = \theta_{\mathrm{old}}$ its gradient is exactly the policy gradient ($\nabla \rho = \rho\, \nabla \log \pi$ and $\rho = 1$).
# But it is only a good estimate **near** $\theta_{\mathrm{old}}$: the advantages were measured under the
# old policy. Maximised without limits, $L^{\mathrm{CPI}}$ pushes $\rho$ as far as it can and the policy
# collapses. TRPO keeps a hard KL constraint; PPO (Schulman et al. 2017, arXiv:1707.06347, **Eq. 7**)
# simply removes the incentive to move further than $1 \pm \epsilon$:
#
# $$L^{\mathrm{CLIP}}(\theta) = \mathbb{E}_t\Big[\min\big(\rho_t\, \hat A_t,\; \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\, \hat A_t\big)\Big].$$
#
# - $\hat A_t > 0$ (a good token): the objective grows with $\rho_t$ until $1+\epsilon$, then is flat, so
#   no gradient pushes it further;
# - $\hat A_t < 0$ (a bad token): it grows as $\rho_t$ falls, until $1-\epsilon$;
# - **why the min**: it is a *pessimistic* bound. If a step moved $\rho_t$ the **wrong** way (made a bad
#   token more likely), the unclipped term is the smaller one and is kept, so the mistake is still
#   penalised in full. Clipping only ever removes the incentive to improve further, never a penalty.
#
# We minimise, so the loss is the negative: $\max(-\rho_t \hat A_t,\; -\mathrm{clip}(\rho_t)\hat A_t)$,
# averaged over the answer tokens. Two diagnostics come with it: `clipfrac`, the share of tokens where
# the clipped term was chosen (a few percent is healthy; much more means the steps are too big), and
# `approx_kl`, the KL between $\pi_{\theta_{\mathrm{old}}}$ and $\pi_\theta$ (how far one optimisation phase moved).
#
# The picture, drawn with `ppo.ppo_policy_loss` itself on one token:

# %%
ratios = torch.linspace(0.5, 1.5, 101)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
for ax, adv in zip(axes, (1.0, -1.0)):
    objective = [-ppo.ppo_policy_loss(torch.log(r).view(1, 1), torch.zeros(1, 1), torch.full((1, 1), adv),
                                      torch.ones(1, 1), clip_coef=0.2)[0].item() for r in ratios]
    ax.plot(ratios, ratios * adv, ls=":", color="gray", label="unclipped  ρ·A")
    ax.plot(ratios, objective, color="C0", label="L_CLIP = min(ρA, clip(ρ)A)")
    ax.axvline(1.0, color="black", lw=0.6)
    ax.set(title=f"advantage A = {adv:+.0f}", xlabel="ratio ρ = π / π_old", ylabel="objective (to maximise)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
plt.close(fig)
fig


# %% [markdown]
# ### Exercise 6.2 — the clipped policy loss
# Difficulty ●●○ · importance: high (PPO's defining line) · about 15 minutes.
#
# Implement `ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef)` returning
# `(pg_loss, stats)`, as `ppo.ppo_policy_loss` does: the loss of PPO's Eq. 7 (a scalar, a masked mean over
# the answer tokens, with its gradient), and its diagnostics `{"approx_kl": ..., "clipfrac": ...}` as
# floats: `clipfrac` is the share of answer tokens where the clipped term is the larger (chosen) one,
# `approx_kl` the $k_3$ estimate of the KL between the old and the new policy, the masked mean of
# $(\rho - 1) - \log \rho$. `ppo.masked_mean(x, mask)` averages over the mask.
#
# *Checked by* `check_ppo_policy_loss`: value, gradient and diagnostics against `ppo.ppo_policy_loss` on
# ratios well outside $1 \pm \epsilon$, for three values of `clip_coef`.
#
# **Mistakes the check names**: the min instead of the max (for a loss); the wrong sign, or the objective
# instead of the loss; the **advantage** clipped instead of the ratio; no clipping; padding counted in the
# mean; the log-ratio used as the ratio, or log-probs divided; a gradient through clipped tokens; a
# detached loss; `clipfrac` over the padding; `approx_kl` not the $k_3$ estimate; an input changed in place.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `ratio = torch.exp(logprobs - old_logprobs)`; `pg_losses = -advantages * ratio`;
# `pg_losses_clipped = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)`;
# `pg_loss = ppo.masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)`. Under `torch.no_grad()`:
# `clipfrac = ppo.masked_mean((pg_losses_clipped > pg_losses).float(), mask).item()` and
# `approx_kl = ppo.masked_mean((ratio - 1) - (logprobs - old_logprobs), mask).item()`.
#
# </details>

# %%
def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_coef: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7) as a loss. All inputs (B, T).
    Returns (pg_loss: scalar tensor, {"approx_kl": float, "clipfrac": float}), as ppo.ppo_policy_loss."""
    assert logprobs.shape == old_logprobs.shape == advantages.shape == mask.shape
    # SOLUTION
    # HINT probabilities from log-probabilities; the loss is minus PPO's pessimistic objective, token by token
    logratio = logprobs - old_logprobs                                               # (B, T)
    ratio = torch.exp(logratio)                                                      # (B, T)
    pg_losses = -advantages * ratio                                                  # (B, T)
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = ppo.masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)         # the pessimistic bound
    with torch.no_grad():
        clipfrac = ppo.masked_mean((pg_losses_clipped > pg_losses).float(), mask).item()
        approx_kl = ppo.masked_mean((ratio - 1) - logratio, mask).item()            # k3
    return pg_loss, {"approx_kl": approx_kl, "clipfrac": clipfrac}
    # END SOLUTION


# %%
ppo_policy_loss = check_ppo_policy_loss(ppo_policy_loss)


# %% [markdown]
# ## 4. The value loss, clipped too
#
# The value head regresses onto the returns $\hat R_t$. OpenAI's PPO code (baselines, and
# lm-human-preferences for language models) also clips the value update around the old prediction, by
# the same logic as the policy: a pessimistic max of the two squared errors,
#
# $$L^{V} = \tfrac12\, \mathbb{E}_t\Big[\max\big((V_t - \hat R_t)^2,\; (V^{\mathrm{old}}_t + \mathrm{clip}(V_t - V^{\mathrm{old}}_t, -\epsilon_v, \epsilon_v) - \hat R_t)^2\big)\Big].$$
#
# (Engstrom et al. 2020, arXiv:2005.12729, found value clipping does not help on MuJoCo and can hurt; it
# is kept here because the RLHF reference implementations use it, see Huang et al. 2024,
# arXiv:2403.17031.) The full PPO loss is `pg_loss + vf_coef * v_loss - ent_coef * entropy`, with
# `vf_coef = 0.1` and no entropy bonus: the KL penalty already keeps the policy from collapsing.
#
# ### Exercise 6.3 — the clipped value loss
# Difficulty ●○○ · importance: medium · about 10 minutes.
#
# Implement `ppo_value_loss(values, old_values, returns, mask, cliprange_value)` returning
# `(v_loss, {"vf_clipfrac": ...})`, as `ppo.ppo_value_loss` does: the scalar $L^V$ above (a masked mean
# over the answer tokens) and the share of answer tokens where the clipped error is the larger one.
#
# *Checked by* `check_ppo_value_loss`: value, gradient and `vf_clipfrac` against `ppo.ppo_value_loss`, for
# three clip ranges.
#
# **Mistakes the check names**: the min instead of the max; no clipping; the factor 1/2 missing; the clip
# around the returns instead of the old values; the value itself clamped instead of its change; padding
# counted; only the clipped error; a wrong gradient; `vf_clipfrac` wrong or missing; an input changed in
# place.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)`; the two
# errors `(values - returns) ** 2` and `(values_clipped - returns) ** 2`; `0.5 * ppo.masked_mean(torch.max(...), mask)`;
# `vf_clipfrac` is the masked mean of `(clipped error > unclipped error).float()`.
#
# </details>

# %%
def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (lm-human-preferences). All inputs (B, T).
    Returns (v_loss: scalar tensor, {"vf_clipfrac": float}), as ppo.ppo_value_loss."""
    assert values.shape == old_values.shape == returns.shape == mask.shape
    # SOLUTION
    # HINT what is clipped is how far the value moved from its old prediction; then the same pessimistic max
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2                                              # (B, T)
    vf_losses_clipped = (values_clipped - returns) ** 2                              # (B, T)
    v_loss = 0.5 * ppo.masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)
    with torch.no_grad():
        vf_clipfrac = ppo.masked_mean((vf_losses_clipped > vf_losses).float(), mask).item()
    return v_loss, {"vf_clipfrac": vf_clipfrac}
    # END SOLUTION


# %%
ppo_value_loss = check_ppo_value_loss(ppo_value_loss)


# %% [markdown]
# ## 5. The details that make it work on language models
#
# PPO's equations fit on a page; a PPO that trains a language model needs more. `rlhf_course/ppo.py`
# numbers each detail where it happens (open it next to this notebook; the numbers below are its
# comments). Most come from OpenAI's lm-human-preferences code and are catalogued by Huang et al. 2024,
# "The N+ implementation details of RLHF with PPO" (arXiv:2403.17031).
#
# 1. **Padding.** Prompts are left-padded (so every answer starts in the same column), answers are
#    right-padded after their `<|end|>`; one attention mask covers the real tokens, and every sum or
#    mean over tokens is masked.
# 2. **The reference is the policy with its LoRA adapter switched off.** `with model.disable_adapter():`
#    gives $\pi_{\mathrm{ref}}$ (the SFT model) from the same weights: no second copy in memory.
# 3. **Reward normalisation.** The reward model's scores are shifted and scaled to mean 0 and std 1 on
#    the first batch of samples and kept fixed, so `kl_coef` means the same whatever the reward model's scale.
# 4. **Missing-EOS penalty.** An answer cut at `max_new_tokens` without ending loses 1 from its score: a
#    reward model may like long rambles; the penalty keeps answers finishing.
# 5. **Per-token KL penalty, score on the last token**: your `compute_rewards`.
# 6. **GAE over the answer tokens**, $\gamma = 1$.
# 7. **Advantage whitening**: advantages normalised to mean 0, std 1 over the batch's real tokens only
#    (padding would drag the statistics).
# 8. **Adaptive KL** (optional, Ziegler et al. 2019, Sec. 2.2): adjust $\beta$ to keep the KL near a target.
#
# And one for the 7B: the policy's LoRA adapter **and** the reward model's LoRA adapter sit on **one**
# 4-bit base; `active_adapter(model, "reward")` switches to the reward model for scoring, and
# `disable_adapter()` to the reference.
#
# ### Exercise 6.4 — find the silent bug
# Difficulty ●●○ · importance: high (bugs in RLHF code rarely crash; they just train something else) · about 15 minutes.
#
# A colleague wrote `rollout_kl` to log how far the policy has drifted: $\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})$
# of each sampled answer, the sum of $k_1$ over its tokens. On their run the KL curve was **flat at
# exactly 0** for 100 iterations, and they concluded that the KL penalty was doing a wonderful job. The
# student version of the cell below is their code. It runs without an error, and it is wrong, twice.
# Find both bugs and fix them.
#
# The inputs are laid out as in PPO's rollout: `input_ids` (B, T) is the left-padded prompt followed by
# the right-padded answer; `attention_mask` is 1 on real tokens (prompt and answer); `response_mask` is 1
# on the answer's tokens only. `model` is a PEFT model (the policy's LoRA adapter on the SFT model).
#
# *Checked by* `check_rollout_kl`: on the tiny model with an adapter that has moved, against the
# package's `evaluation.kl_to_reference`; it also checks that the adapter is on again afterwards (the
# policy keeps training).
#
# **Mistakes the check names**: a KL of exactly 0 (the reference is the policy itself); the prompt and the
# padding summed too; the mask off by one; the KL with the wrong sign; the adapter left switched off
# afterwards; an input changed in place.
#
# <details><summary>Hint 2 (the two fixes)</summary>
#
# Bug 1: the reference's forward pass must run inside `with model.disable_adapter():` (the SFT model is
# the same weights with the adapter off). Bug 2: only the answer was sampled from the policy: multiply the
# per-token difference by `response_mask[:, 1:]` (shifted like the log-probs) before summing.
#
# </details>

# %%
def rollout_kl(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               response_mask: torch.Tensor) -> torch.Tensor:
    """KL(pi || pi_ref) of each sampled answer: the sum over its tokens of log pi(y_t) - log pi_ref(y_t).
    input_ids, attention_mask, response_mask: (B, T). Returns (B,)."""
    assert input_ids.shape == attention_mask.shape == response_mask.shape
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits          # (B, T, V)
    logprobs = token_logprobs(logits[:, :-1], input_ids[:, 1:])                        # (B, T-1): token t + 1
    # SOLUTION
    # BUGGY ref_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # the reference policy
    # BUGGY ref_logprobs = token_logprobs(ref_logits[:, :-1], input_ids[:, 1:])           # (B, T-1)
    # BUGGY return (logprobs - ref_logprobs).sum(dim=1)
    # HINT Which network computes ref_logits? And which tokens were sampled from the policy?
    with model.disable_adapter():                                   # bug 1: the reference is the adapter OFF
        ref_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    ref_logprobs = token_logprobs(ref_logits[:, :-1], input_ids[:, 1:])                 # (B, T-1)
    return ((logprobs - ref_logprobs) * response_mask[:, 1:]).sum(dim=1)  # bug 2: answer tokens only
    # END SOLUTION


# %%
rollout_kl = check_rollout_kl(rollout_kl)

# %% [markdown]
# **Question.** Explain each bug in a sentence, and what the first would do to a PPO run whose KL
# *penalty* were computed this way.
#
# <!-- SOLUTION -->
# **Bug 1**: the "reference" logits came from the same model with its adapter **on**: the policy
# compared with itself, so the KL is 0 whatever the policy does (and a KL *penalty* built this way
# penalises nothing: PPO would run with $\beta = 0$ while its logs say it is perfectly on a leash). The
# reference is the SFT model: `with model.disable_adapter():`. **Bug 2**: the sum ran over the prompt and
# the padding too. The prompt was not sampled from the policy, so its log-ratio is not part of the KL
# of the answer (it adds a constant that depends on the prompt). Multiply by `response_mask[:, 1:]`
# (shifted like the log-probs: entry $t$ is the log-prob of token $t+1$).
# <!-- END SOLUTION -->

# %% [markdown]
# ## 6. Training PPO
#
# `ppo.train_ppo` puts it together: it loads the SFT model with a fresh LoRA adapter and a value head,
# puts the reward model on the same base as a second adapter, and runs the loop of `PPOTrainer.step`
# (rollout → rewards → GAE → a few epochs of minibatches). The reward it optimises is the reward model;
# `monitor_fn` is the toy world's **ground truth**, logged and never optimised: in the real world you
# would not have it, here it tells us whether the policy really got better.
#
# A short run: 25 iterations of 32 prompts, about half a second each on 2 quiet CPU cores. The
# pipeline runs `profile.ppo_steps` = 100, and longer is **not** simply better here. We measured this very
# call for 100 iterations: the reward model's score kept climbing (about 2.4 at the end), but the ground
# truth peaked around 0.6 between iterations 15 and 45 and fell back, to 0.43 on the held-out prompts at
# iteration 100 (SFT: 0.35; best possible: 1.07), with a KL of 7 nats. That is over-optimisation of an
# imperfect reward model, the subject of section 8.
#
# On the `7b` profile the same call trains the SFT adapter of notebook 3 against the reward model of
# notebook 5 (a second adapter on the same 4-bit base), on the real preference set's prompts, and the
# monitor is the independent judge (`gold.gold_reward_fn`, 2.4 GB in fp32 beside the 4-bit base and its
# two adapters: section 9's plan plus the judge, about 9.5 GiB, estimated): `profile.ppo_steps` iterations, an estimated
# 10-15 minutes on a T4. Every "ground truth" below is then the judge's score.

# %%
# NBVAL_IGNORE_OUTPUT
PPO_STEPS = min(25, profile.ppo_steps)                     # a short run (the 7b profile: its own, shorter one)
gold = gold_reward_fn(profile)                             # watched, never optimised: the ground truth, or the judge
GOLD = "ground truth" if profile.has_ground_truth else "judge"
sft_path = trained_models.sft_model(profile)                  # notebook 3's SFT model: the start and the reference
tokenizer = load_tokenizer(profile, sft_path)
run = ppo.train_ppo(profile, model_id=sft_path, reward_model_dir=trained_models.reward_model_dir(profile),
                    monitor_fn=gold, prompts=prompts_for(profile, "train"), steps=PPO_STEPS, seed=0)
policy = run.model                                         # the PEFT model: SFT weights + the trained adapter
print({k: round(v, 2) for k, v in run.metrics.items()})

# %%
plots.plot_training_curves(run.history, ["reward/score", "reward/monitor", "objective/kl", "policy/clipfrac",
                                         "policy/approx_kl", "rollout/length"], smooth=0.6,
                           title=f"PPO, {PPO_STEPS} iterations (reward model + KL penalty, kl_coef = {profile.recipe.ppo_kl_coef:g})")

# %% [markdown]
# How to read them:
# - `reward/score`: the reward model's mean score of each batch (what PPO maximises). It climbs fast.
# - `reward/monitor`: the ground truth of the same answers. It climbs too, more slowly: the reward model
#   is a good but imperfect proxy (84% accuracy on held-out pairs, notebook 5).
# - `objective/kl`: nats per answer between the policy and the SFT model. It grows from 0 as the policy
#   moves; the penalty $\beta \cdot \mathrm{KL}$ is the price of each nat.
# - `policy/clipfrac` and `policy/approx_kl`: how hard each optimisation phase pushed. Small values:
#   the steps stay inside the trust region.
# - `rollout/length`: tokens per answer.
#
# The same run as a path on the **reward vs KL** plane, the currency of RLHF: each point is the mean of
# five iterations (the ground truth, against the KL the policy paid for it).

# %%
window = 5
points = [(sum(h["objective/kl"] for h in chunk) / len(chunk), sum(h["reward/monitor"] for h in chunk) / len(chunk))
          for chunk in (run.history[i : i + window] for i in range(0, len(run.history), window))]
plots.plot_reward_vs_kl({"PPO, along training": points}, best=best_possible_reward() if profile.has_ground_truth else None,
                        title=f"{'Ground-truth' if profile.has_ground_truth else 'Judged'} reward vs KL to the SFT model")

# %% [markdown]
# ## 7. Evaluation against the SFT model
#
# On the held-out prompts (a prompt template never seen in training, and the claim prompts), 4 answers
# per prompt at the profile's temperature. The SFT baseline needs no second model: it **is** the policy
# with its adapter switched off, exactly as PPO's reference was. `evaluate_policy` measures the ground
# truth, the KL to the reference, and the **win rate**: how often PPO's answer beats the SFT model's
# answer to the same prompt (same seed), judged by the ground truth.

# %%
# NBVAL_IGNORE_OUTPUT
eval_kw = protocol(profile, gold)                                     # the course's one evaluation protocol
with reference_policy(policy):                                        # the SFT model, from the same weights
    sft_eval = evaluate_policy(policy, tokenizer, **eval_kw)
ppo_eval = evaluate_policy(policy, tokenizer, reference="self", baseline=sft_eval, **eval_kw)
sft_summary, ppo_summary = sft_eval.summary(), ppo_eval.summary()
for key in ("reward", "helpful", "harmless", "length", "refusal_harmful", "sycophancy"):
    if key in ppo_summary:  # the toy world's attributes and failure modes exist on the tiny profile only
        print(f"{key:>16}: SFT {sft_summary[key]:6.2f}   PPO {ppo_summary[key]:6.2f}")
print(f"{'KL to SFT':>16}: {ppo_summary['kl']:.2f} nats per answer;  win rate vs SFT: {ppo_summary['win_rate']:.2f}")

# %%
print(f"PPO beats SFT on the {GOLD}: {ppo_summary['reward'] > sft_summary['reward']}")
print(f"PPO wins more often than it loses against SFT: {ppo_summary['win_rate'] > 0.5}")
print(f"PPO moved away from SFT (KL > 0): {ppo_summary['kl'] > 0}")

# %%
plots.plot_reward_distributions({"SFT": sft_eval, "PPO": ppo_eval},
                                title=f"{'Ground-truth' if profile.has_ground_truth else 'Judged'} reward per answer (held-out prompts)")

# %% [markdown]
# Not every number improves. In the run stored in this notebook the **sycophancy** rate (agreeing with a
# user's false claim) went up: the reward model, trained on noisy labels, does not punish agreement
# enough, and PPO found that out. The answers also got longer. Both are the reward model's weaknesses
# turned into the policy's habits; notebook 8 probes them. Some answers, SFT's and PPO's side by side:

# %%
# NBVAL_IGNORE_OUTPUT
for s_sft, s_ppo in list(zip(sft_eval.samples, ppo_eval.samples))[::40]:
    print(f"{s_sft.prompt}\n  SFT [{s_sft.reward:+.2f}]: {s_sft.completion.text}\n  PPO [{s_ppo.reward:+.2f}]: {s_ppo.completion.text}\n")

# %% [markdown]
# ## 8. Reward hacking, and the KL remedy
#
# A reward model is a **proxy**. Optimise a proxy hard enough and the policy finds what the proxy
# rewards that the real goal does not (Goodhart's law; measured for RLHF by Gao et al. 2022, "Scaling
# laws for reward model overoptimization", arXiv:2210.10760; seen by Stiennon et al. 2020,
# arXiv:2009.01325, Sec. 4.3).
#
# The course ships a reward model built with a trap: it was trained on labels from a labeller with a
# **verbosity bias**, someone who, other things equal, prefers longer answers
# (`trained_models.reward_model_dir(profile, "length_biased")`; each extra sentence adds 0.25 to the labeller's
# utility, so even a filler sentence looks better than nothing). Real labellers have this bias too, and
# reward models inherit it (Singhal et al. 2023, "A long way to go: investigating length correlations in
# RLHF", arXiv:2310.03716).
#
# `reward_hacking_curves` runs PPO against that reward model twice, with no KL penalty and with
# `kl_coef = 0.2`, and logs the proxy (its score) next to the ground truth. 30 iterations each (longer
# runs make the gap wider):
#
# On the `7b` profile the length-biased labeller does not exist (it is the toy world's); the same two runs
# go against the profile's own reward model (notebook 5) with the judge as the gold reward, which is Gao
# et al.'s setting: watch whether the judge follows the proxy as the KL grows. `profile.ppo_steps`
# iterations each (an estimated 20-30 minutes on a T4 for both) are short for over-optimisation to show;
# expect the proxy to rise and the judge to move little. Section 7's policy is freed first: one 4-bit model
# at a time.

# %%
# NBVAL_IGNORE_OUTPUT
del run, policy  # section 7's PPO policy: each run below loads its own model (one 4-bit 7B at a time on a T4)
free_memory()
HACK_STEPS = min(30, profile.ppo_steps)
curves = reward_hacking_curves(profile, kl_coefs=(0.0, 0.2), steps=HACK_STEPS, monitor_fn=gold,
                               prompts=prompts_for(profile, "train"), seed=0)
hack = summarize_hacking(curves)
for name, s in hack.items():
    lengths = [r["length"] for r in curves[name]]
    print(f"{name:>12}: proxy {s['proxy_start']:+.2f} -> {s['proxy_end']:+.2f} | {GOLD} {s['true_start']:+.2f} -> "
          f"{s['true_end']:+.2f} | KL {s['kl_end']:.1f} | length {sum(lengths[:5]) / 5:.0f} -> {sum(lengths[-5:]) / 5:.0f} tokens")

# %%
plots.plot_reward_hacking(curves, title="PPO against a length-biased reward model")

# %%
free, leashed = hack["kl_coef=0"], hack["kl_coef=0.2"]
print(f"the proxy rose in both runs: {free['proxy_end'] > free['proxy_start'] and leashed['proxy_end'] > leashed['proxy_start']}")
print(f"without a KL penalty, the {GOLD} ends lower than with it: {free['true_end'] < leashed['true_end']}")
print(f"without a KL penalty, the policy drifts further: {free['kl_end'] > leashed['kl_end']}")

# %% [markdown]
# Without the penalty the proxy keeps climbing while the ground truth stalls and then falls: the policy
# learned that **longer** pays rather than **better** (compare the answer lengths printed above). With
# `kl_coef = 0.2` each nat of drift costs reward, the policy stays near the SFT model, where the reward
# model is still right, and the ground truth holds. That is the KL term's real job. Its price: the
# leashed policy also cannot move far toward genuinely better answers. Choosing $\beta$ is choosing a
# point on the reward vs KL frontier.
#
# Other remedies, in brief: better reward models (more and more diverse labellers, notebook 5), an
# explicit length penalty or length-normalised rewards, ensembles of reward models (Coste et al. 2023,
# arXiv:2310.02743), early stopping on a held-out judge, and refreshing the reward model on the policy's
# new answers (iterated RLHF, notebook 8).
#
# **Question.** Why did we evaluate with the ground truth and not with the reward model? What would the
# reward model's win rate of the `kl_coef=0` policy over SFT tell you?
#
# <!-- SOLUTION -->
# The reward model is the thing being hacked: judged by it, the `kl_coef=0` policy looks like a triumph
# (its score is what it maximised). A win rate measured by the proxy only tells you how well PPO
# optimised the proxy. To catch hacking you need a judge the policy was **not** trained against: here the
# ground truth, in practice held-out human raters, a stronger model, or at least a second reward model
# trained on other data.
# <!-- END SOLUTION -->

# %% [markdown]
# ## 9. The 7B run
#
# The `7b` profile runs the same cells with a 7B chat model (Zephyr-7B-β, Mistral architecture). What
# has to fit in a Colab T4's 15 GB:
# - **one** base model in 4-bit NF4 with double quantisation (3.3 GiB for 7.2B weights), shared by
# - the **policy**: a LoRA adapter (r = 16 on every linear layer, 42M parameters, fp32 with its
#   gradients and AdamW moments) plus the **value head** (one linear layer on the last hidden state);
# - the **reference**: the same base with the adapters switched off (free);
# - the **reward model**: a second, frozen LoRA adapter with its score head, switched in for scoring.
#
# A second copy of a 7B model (the usual "four models" of PPO: policy, value, reference, reward) would
# not fit; adapters make it one model. `rlhf_course.gpu_memory` adds up the peak term by term (estimates
# from exact byte counts; not yet measured on a T4):

# %%
print(gpu_memory.plan("zephyr-7b", "ppo", "t4").table())

# %% [markdown]
# Time on a T4 (an estimate, not a measurement): sampling 4 answers of up to 128 tokens from a 4-bit 7B
# model and the optimisation phase take roughly half a minute per iteration, so the profile's 20
# iterations take 10-15 minutes, plus the reward model trained on first use (`trained_models.reward_model_dir`).
# Every cell above already ran with the `7b` numbers if this notebook runs on a GPU; the cell below
# adds what only a GPU can show: the peak memory PPO really used, and an answer of the trained policy
# (sampled in section 7, scored by the judge).

# %%
if not profile.has_ground_truth:  # the 7b profile
    if profile.device == "cuda":
        print(f"peak GPU memory during this notebook: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB "
              f"(plan: {gpu_memory.plan('zephyr-7b', 'ppo', 't4').total_gib:.1f} GiB on a T4)")
    sample = ppo_eval.samples[0]
    print(f"{sample.prompt}\n  PPO [judge {sample.reward:+.2f}]: {sample.completion.text}")
else:
    print("tiny profile: the 7B run is skipped (run this notebook on a Colab T4 to see it)")

# %% [markdown]
# ## 10. What to remember
#
# - RLHF with PPO maximises $\mathbb{E}[r_\phi] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})$, which
#   becomes per-token rewards: $-\beta\,(\log\pi - \log\pi_{\mathrm{ref}})$ on every answer token, plus
#   the reward model's score on the last one.
# - PPO reuses each batch of samples for several steps through the importance ratio, and clips it so
#   that no step gains from moving further than $1 \pm \epsilon$; the min keeps every penalty.
# - The details matter as much as the equations: masks, the reference as the adapter switched off,
#   reward normalisation, the missing-EOS penalty, advantage whitening.
# - Bugs in RLHF are silent: a KL that is exactly 0 is a bug, not a success. Always log the KL, the clip
#   fraction and, if you have one, a judge the policy is not trained against.
# - A reward model is a proxy: optimised without a leash, the policy finds its biases (here: length).
#   The KL penalty is the leash.
#
# **Past one machine**: `accelerate launch --num_processes N` runs this trainer data-parallel as it is.
# When the model outgrows one GPU, the engines that shard it (TRL's GRPO/RLOO with DeepSpeed ZeRO or
# FSDP, verl, OpenRLHF) take the same knobs under other names: `docs/scaling.md` maps every `PPOConfig`
# field onto theirs, and says what our code would need (sampling with vLLM, weight sync after each step).
#
# **Next**: notebook 7 gets the same result **without** a reward model, sampling or a value head: DPO
# turns the objective of section 1 into a classification loss on the preference pairs.
