# %% [markdown]
# # 2. Policy gradients: REINFORCE, baselines, advantages and GAE
#
# Notebook 1 measured how good a policy is. Now we *improve* one by gradient ascent on its expected
# return. The **policy-gradient theorem** turns "make the return larger" into a loss you can
# back-propagate, even though the reward itself (a slot machine, or a judge of an answer) has no
# gradient. We derive it, run it on a bandit, see why a **baseline** is needed, generalise the
# baseline to **advantages** and **GAE**, and finish by training the tiny language model with
# REINFORCE against the toy world's ground-truth reward: RLHF's inner loop in forty lines.
#
# **Learning goals**
# - derive the policy-gradient theorem with the log-derivative trick, and write the REINFORCE loss;
# - explain why subtracting a baseline keeps the gradient unbiased and how much variance it removes;
# - whiten advantages over a padded batch, and derive GAE from TD errors, with the bias-variance
#   trade-off that lambda controls;
# - compute log pi(answer | prompt) from a language model's logits, and use it to raise the reward of
#   the tiny model's answers.
#
# **Prerequisites**: notebook 1 (returns, values, the Bellman equation, the LM as a policy); PyTorch
# autograd (`loss.backward()`, optimisers).
#
# **Estimated time**: 45-60 minutes to work through. The notebook runs in about a minute on a laptop
# CPU.

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from rlhf_course import trained_models
from rlhf_course.checks.nb02_policy_gradients import (check_compute_gae, check_masked_whiten, check_reinforce_loss,
                                                      check_sequence_logprob)
from rlhf_course.evaluation import evaluate_policy, prompts_for, protocol
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import load_policy, load_tokenizer
from rlhf_course.logprobs import completion_logprobs
from rlhf_course.plots import plot_training_curves
from rlhf_course.sampling import answer_mask, decode_responses, prompt_mask, sample_ids

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=UserWarning)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
_ = torch.manual_seed(0)  # the seed for the cells below


# %% [markdown]
# ## 1. The policy-gradient theorem
#
# A policy $\pi_\theta$ with parameters $\theta$ (a table of logits, or a language model) produces
# trajectories $\tau = (s_0, a_0, r_0, s_1, a_1, r_1, \dots)$. We want to maximise its expected return
#
# $$J(\theta) = \mathbb{E}_{\tau \sim \pi_\theta}\big[R(\tau)\big], \qquad R(\tau) = \sum_t \gamma^t r_t .$$
#
# The reward comes from the environment, so we cannot differentiate through it. But the
# *probabilities* of the trajectories depend on $\theta$, and the **log-derivative trick**
# $\nabla_\theta p = p \, \nabla_\theta \log p$ moves the gradient onto them:
#
# $$\nabla_\theta J = \sum_\tau R(\tau)\, \nabla_\theta p_\theta(\tau)
# = \sum_\tau p_\theta(\tau)\, R(\tau)\, \nabla_\theta \log p_\theta(\tau)
# = \mathbb{E}_{\tau \sim \pi_\theta}\big[R(\tau)\, \nabla_\theta \log p_\theta(\tau)\big].$$
#
# The probability of a trajectory is a product of the environment's dynamics (no $\theta$ in them) and
# the policy's choices, so $\nabla_\theta \log p_\theta(\tau) = \sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)$.
# An action cannot change the rewards that came before it, so each $\log \pi_\theta(a_t \mid s_t)$ is weighted by
# the return from $t$ on (Williams 1992, "REINFORCE"; Sutton et al. 2000, the policy-gradient theorem):
#
# $$\nabla_\theta J = \mathbb{E}\Big[\sum_t G_t \, \nabla_\theta \log \pi_\theta(a_t \mid s_t)\Big],
# \qquad G_t = \sum_{k \ge t} \gamma^{k-t} r_k .$$
#
# An expectation can be estimated with samples: act, record $G_t$, and average. As code, this is the
# gradient of a **surrogate loss** whose only trainable part is $\log \pi_\theta$:
# $L(\theta) = -\frac{1}{N}\sum_i G_i \log \pi_\theta(a_i \mid s_i)$ (the minus sign because optimisers minimise).
#
# **Baselines.** For any $b(s)$ that does not depend on the action,
# $\mathbb{E}_{a \sim \pi}\big[b(s)\nabla_\theta \log \pi_\theta(a \mid s)\big] = b(s)\sum_a \nabla_\theta \pi_\theta(a \mid s)
# = b(s)\,\nabla_\theta 1 = 0$. So $G_t - b(s_t)$ gives the same gradient *on average*, and, with a good
# $b$, a much less noisy one. The best simple choice is the value $V(s_t)$, and
# $A_t = G_t - V(s_t)$ is the **advantage**: how much better this action did than the policy does on
# average from that state.
#
# ## 2. REINFORCE on a bandit
#
# A 4-armed bandit whose arms pay about 20 each (mean 20, 20.5, 21 and 22, noise 1): the differences
# matter, the offset does not. The policy is a softmax over 4 logits.
#
# ### Exercise 2.1 — The REINFORCE loss
# *Difficulty ●○○ · importance: high (every RLHF policy loss is a descendant of this line) · about 5
# minutes · checked on random logits: the value, its gradient, the sign, the baseline and that no
# gradient flows into the baseline.*
#
# Write the loss whose gradient is the REINFORCE estimate: the mean over the batch of
# $-(G_i - b_i)\log \pi_\theta(a_i)$. The weight $G - b$ is a constant for the policy's update (a learned
# baseline is trained by its own loss, never by this one). The package's version is
# `rlhf_course.policy_gradient.reinforce_loss`, with the same signature.
#
# **Mistakes the check names**: the wrong sign; the baseline not subtracted; a sum instead of a mean;
# not a 0-dimensional tensor; no gradient reaching the policy (detached log-probs); a gradient flowing
# into a learned baseline; `returns` changed in place.
#
# <details><summary>Hint 2 (the two lines)</summary>
#
# `advantages = (returns - baseline).detach()`, then the loss is `-(advantages * logprobs).mean()`.
#
# </details>

# %%
def reinforce_loss(logprobs: torch.Tensor, returns: torch.Tensor, baseline) -> torch.Tensor:
    """REINFORCE's surrogate loss (Williams 1992): -mean_i (G_i - b_i) * log pi(a_i | s_i).

    logprobs: (B,) log pi of the actions taken (with gradient); returns: (B,) their returns G;
    baseline: a float or a (B,) tensor. Returns a scalar (0-dimensional) tensor.
    """
    assert logprobs.shape == returns.shape
    # SOLUTION
    # STUB return torch.zeros((), requires_grad=True)
    # HINT the optimiser minimises; only log pi may carry a gradient - the weight G - b must not
    advantages = (returns - baseline).detach()   # (B,)
    return -(advantages * logprobs).mean()
    # END SOLUTION


# %%
reinforce_loss = check_reinforce_loss(reinforce_loss)

# %% [markdown]
# Now train the bandit's policy with it: 4 pulls per step, plain SGD, 200 steps, 10 seeds. The
# baseline here is a running mean of the rewards seen so far (a constant for each step: it does not
# depend on the arm pulled, so the gradient stays unbiased).

# %%
MEANS = torch.tensor([20.0, 20.5, 21.0, 22.0])  # expected payout of each arm; noise N(0, 1) on top


def train_bandit(use_baseline: bool, steps: int = 200, batch: int = 4, lr: float = 0.05, seed: int = 0) -> list[float]:
    """REINFORCE on the bandit; returns the policy's expected reward sum_a pi(a) q*(a) after each step."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.zeros(len(MEANS), requires_grad=True)  # theta: a uniform policy to start
    opt = torch.optim.SGD([logits], lr=lr)
    baseline, curve = 0.0, []
    for _ in range(steps):
        arms = torch.multinomial(F.softmax(logits, -1).detach(), batch, replacement=True, generator=gen)  # (batch,)
        rewards = MEANS[arms] + torch.randn(batch, generator=gen)                                           # (batch,)
        loss = reinforce_loss(F.log_softmax(logits, -1)[arms], rewards, baseline if use_baseline else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        baseline = 0.9 * baseline + 0.1 * rewards.mean().item()  # running mean of the rewards
        curve.append((F.softmax(logits, -1) @ MEANS).item())
    return curve


curves = {name: torch.tensor([train_bandit(flag, seed=s) for s in range(10)])  # (seeds, steps)
          for name, flag in [("no baseline", False), ("running-mean baseline", True)]}
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for name, c in curves.items():
    mean, std = c.mean(0), c.std(0)
    ax.plot(mean, label=name)
    ax.fill_between(range(len(mean)), mean - std, mean + std, alpha=0.2)
ax.axhline(MEANS.max(), color="gray", ls=":", label="best arm")
ax.set(xlabel="step", ylabel="expected reward of the policy", title="REINFORCE on a 4-armed bandit (10 seeds, ±1 std)")
ax.legend()
plt.show()
final = {name: c[:, -1] for name, c in curves.items()}  # (seeds,) expected reward after 200 steps
print(f"with the baseline, every run ends above 21.4: {bool((final['running-mean baseline'] > 21.4).all())}")
print(f"without it, some runs locked onto a worse arm (below 20.6): {bool((final['no baseline'] < 20.6).any())}")
print(f"mean over the runs after 200 steps: no baseline {final['no baseline'].mean():.1f}, "
      f"baseline {final['running-mean baseline'].mean():.1f} (best arm: 22)")


# %% [markdown]
# Without a baseline every pull returns about +20, so *every* sampled arm is pushed up, and the arm
# that happens to be pulled most wins: the policy lurches around and several runs lock onto a bad
# arm. With the baseline only the difference from the average counts.
#
# The same effect, measured directly: estimate the gradient at the uniform policy many times, from
# batches of 8 pulls, and look at the spread of the estimates.

# %%
def gradient_estimates(baseline: float, batch: int = 8, repeats: int = 2000, seed: int = 0) -> torch.Tensor:
    """(repeats, 4): REINFORCE gradient estimates of J at the uniform policy, one per batch of pulls."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(repeats):
        logits = torch.zeros(4, requires_grad=True)
        arms = torch.multinomial(torch.full((4,), 0.25), batch, replacement=True, generator=gen)
        rewards = MEANS[arms] + torch.randn(batch, generator=gen)
        loss = reinforce_loss(F.log_softmax(logits, -1)[arms], rewards, baseline)
        grads.append(-torch.autograd.grad(loss, logits)[0])  # the ascent direction
    return torch.stack(grads)


true_gradient = 0.25 * (MEANS - MEANS.mean())  # d/dtheta of sum_a softmax(theta)_a q*(a) at theta = 0
estimates = {"b = 0": gradient_estimates(0.0), "b = E[R]": gradient_estimates(MEANS.mean().item())}
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
for ax, (name, g) in zip(axes, estimates.items()):
    ax.hist(g[:, 3].numpy(), bins=40, color="C0" if name == "b = 0" else "C1")
    ax.axvline(true_gradient[3], color="k", ls="--", label="true gradient")
    ax.set(title=f"{name}: estimates of dJ/dtheta_best", xlabel="gradient estimate")
    ax.legend()
plt.show()
var = {name: g.var(0).sum().item() for name, g in estimates.items()}
print(f"both are unbiased: mean estimates within 0.2 of the true gradient: "
      f"{all((g.mean(0) - true_gradient).abs().max().item() < 0.2 for g in estimates.values())}")
print(f"the baseline divides the variance by more than 50: {var['b = 0'] / var['b = E[R]'] > 50}")


# %% [markdown]
# ## 3. Advantages over a padded batch: whitening
#
# In RLHF a batch holds many answers of different lengths, padded to the longest: a tensor of
# advantages `(B, T)` with a `mask` that is 1 on real tokens and 0 on padding. Before the policy update
# most implementations **whiten** the advantages: shift and scale them to mean 0 and standard
# deviation 1 over the batch (the OpenAI baselines, `lm-human-preferences`, TRL). It is a baseline and
# a step-size normaliser in one: half of the tokens are pushed up and half down, whatever the scale of
# the reward. The one trap: the padding must not take part in the mean and the standard deviation
# (padded positions hold whatever value was there, and they are not actions).
#
# ### Exercise 2.2 — Masked whitening
# *Difficulty ●○○ · importance: medium (a silent bug when wrong: nothing crashes) · about 5 minutes ·
# checked against `rlhf_course.ppo.masked_whiten` on batches whose padding holds a loud value (40), and on
# one whose real entries are all equal.*
#
# **Mistakes the check names**: padding counted in the mean and the std; padding not zeroed; each row
# whitened on its own instead of the whole batch; the mean not subtracted, or the std not divided by;
# NaN when the std is 0 (no epsilon); `x` changed in place.
#
# <details><summary>Hint 2 (the formulas)</summary>
#
# `mean = (x * mask).sum() / mask.sum()`; `var = ((x - mean) ** 2 * mask).sum() / mask.sum()`; return
# `(x - mean) * torch.rsqrt(var + 1e-8) * mask`.
#
# </details>

# %%
def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the entries where mask is 1 (the whole batch together); 0 where mask is 0.

    x, mask: (B, T), mask is 1.0 on real tokens and 0.0 on padding. Returns (B, T).
    """
    assert x.shape == mask.shape
    # SOLUTION
    # STUB return x
    # HINT a mean over the real entries only is a sum over them divided by how many there are; the std likewise
    mean = (x * mask).sum() / mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / mask.sum()
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask
    # END SOLUTION


# %%
masked_whiten = check_masked_whiten(masked_whiten)


# %% [markdown]
# ## 4. Generalised advantage estimation (GAE)
#
# The advantage $A_t = G_t - V(s_t)$ uses the whole noisy return. A value function can also stand in
# for the *future*: the **TD error**
#
# $$\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$$
#
# is itself an advantage estimate. If $V$ were the true value $V^\pi$, then
# $\mathbb{E}[\delta_t \mid s_t, a_t] = Q^\pi(s_t, a_t) - V^\pi(s_t) = A^\pi(s_t, a_t)$: one reward of noise, but a
# bias wherever $V$ is wrong. Adding up $k$ TD errors telescopes to a $k$-step estimate,
#
# $$\hat A^{(k)}_t = \sum_{l=0}^{k-1} \gamma^l \delta_{t+l} = -V(s_t) + r_t + \gamma r_{t+1} + \dots + \gamma^{k-1} r_{t+k-1} + \gamma^k V(s_{t+k}),$$
#
# which trusts $V$ less (one value at the far end, discounted by $\gamma^k$) and the noisy rewards more as
# $k$ grows; $k = \infty$ is $G_t - V(s_t)$. **GAE** (Schulman et al. 2016, arXiv:1506.02438, Eq. 16)
# averages all of them with weights $(1 - \lambda)\lambda^{k-1}$, which collapses to a discounted sum of TD errors:
#
# $$\hat A^{\text{GAE}(\gamma, \lambda)}_t = (1-\lambda)\sum_{k \ge 1} \lambda^{k-1} \hat A^{(k)}_t = \sum_{l \ge 0} (\gamma\lambda)^l \, \delta_{t+l},
# \qquad \text{computed backwards: } \hat A_t = \delta_t + \gamma\lambda \hat A_{t+1}.$$
#
# - $\lambda = 0$: $\hat A_t = \delta_t$ (low variance, biased by the errors of $V$);
# - $\lambda = 1$: $\hat A_t = G_t - V(s_t)$ (unbiased, high variance: REINFORCE with a value baseline).
#
# The **returns** $\hat A_t + V(s_t)$ (the $\lambda$-return) are the targets the value function is trained on.
# In RLHF a step is a token, an answer is an episode, $\gamma = 1$, and PPO implementations use
# $\lambda \approx 0.95$. After an answer's last token the episode is over: the value there is 0, never the
# value the model happens to predict on a padded position.
#
# ### Exercise 2.3 — GAE over a padded batch
# *Difficulty ●●○ · importance: high (PPO, notebook 6, is built on it) · about 15 minutes · checked
# against `rlhf_course.ppo.compute_gae` for three (gamma, lambda) pairs, and at lambda 0 and 1.*
#
# `rewards`, `values` and `mask` are `(B, T)`, each row an answer padded on the right. Return
# `(advantages, returns)`, both `(B, T)` and 0 on padding.
#
# **Mistakes the check names**: bootstrapping from a padded position (a value after the answer's end);
# gamma and lambda swapped; gamma missing; lambda missing; the one-step TD errors only; the recursion run
# forwards; advantages left on padding; the advantages returned as the returns; `values` changed in place
# (`values *= mask` also fails on an expanded tensor).
#
# <details><summary>Hint 2 (the recursion)</summary>
#
# `values = values * mask` (a new tensor). Then for `t` in `reversed(range(T))`:
# `next_value = values[:, t + 1]` (0 at the last column), `delta = rewards[:, t] + gamma * next_value - values[:, t]`,
# `A = delta + gamma * lam * A`, `advantages[:, t] = A`. Finally `advantages * mask`, and
# `returns = advantages + values`.
#
# </details>

# %%
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016, Eq. 16): A_t = delta_t + gamma * lam * A_{t+1},
    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t), with V = 0 after the end of each sequence.

    rewards, values, mask: (B, T), right-padded. Returns (advantages, returns), both (B, T), 0 on padding.
    """
    assert rewards.shape == values.shape == mask.shape
    B, T = rewards.shape
    # SOLUTION
    # STUB return torch.zeros_like(rewards), torch.zeros_like(rewards)
    # HINT what is V just after an answer's last token? Then it is returns_to_go's backward loop, over TD errors
    values = values * mask                           # V = 0 on padding: nothing to bootstrap from after the end
    advantages = torch.zeros_like(rewards)           # (B, T)
    next_advantage = torch.zeros(B)                  # A_{T} = 0
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros(B)
        delta = rewards[:, t] + gamma * next_value - values[:, t]        # (B,) TD error
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    advantages = advantages * mask
    return advantages, advantages + values
    # END SOLUTION


# %%
compute_gae = check_compute_gae(compute_gae)

# %% [markdown]
# **The lambda trade-off, measured.** Episodes of 16 steps, each reward $r_t \sim \mathcal N(0.1, 1)$, so
# the true value of the start is $V^\pi(s_0) = 1.6$. Give GAE a value function that is off by a constant
# (a real value head is never exact: $+0.5$ for a decent one, $+5$ for an untrained one), compute the
# $\lambda$-return at $t = 0$ for 4000 episodes, and split its error into bias$^2$ and variance.

# %%
gen = torch.Generator().manual_seed(0)
T, N = 16, 4000
rewards = 0.1 + torch.randn(N, T, generator=gen)               # (N, T)
true_values = 0.1 * torch.arange(T, 0, -1).float()             # (T,) V(s_t) = 0.1 * (steps left)
mask = torch.ones(N, T)
lams = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0]
bias2, variance = {}, {}
for error in (0.5, 5.0):
    values = (true_values + error).expand(N, T)                # (N, T): a value function that is off
    bias2[error], variance[error] = [], []
    for lam in lams:
        _, lambda_returns = compute_gae(rewards, values, mask, gamma=1.0, lam=lam)
        estimate = lambda_returns[:, 0]                        # (N,) the target for V(s_0)
        bias2[error].append((estimate.mean() - true_values[0]).item() ** 2)
        variance[error].append(estimate.var().item())

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
left.plot(lams, bias2[0.5], marker="o", label="bias²")
left.plot(lams, variance[0.5], marker="o", label="variance")
left.set(xlabel="λ", ylabel="squared error", yscale="log", title="V off by 0.5: bias² and variance")
for error in (0.5, 5.0):
    right.plot(lams, [b + v for b, v in zip(bias2[error], variance[error])], marker="o", label=f"V off by {error}")
right.set(xlabel="λ", ylabel="bias² + variance", yscale="log", title="total error of the λ-return")
for ax in (left, right):
    ax.legend()
    ax.grid(alpha=0.3)
plt.show()
for error in (0.5, 5.0):
    total = [b + v for b, v in zip(bias2[error], variance[error])]
    print(f"V off by {error}: lambda = 0 has bias^2 {bias2[error][0]:.2f} and variance {variance[error][0]:.1f}; "
          f"lambda = 1 has bias^2 {bias2[error][-1]:.2f} and variance {variance[error][-1]:.1f}; "
          f"best lambda {lams[total.index(min(total))]}")


# %% [markdown]
# At $\lambda = 0$ the estimate inherits all of the value function's error but only one reward's noise;
# at $\lambda = 1$ it is unbiased but carries the noise of all 16 rewards. Which $\lambda$ is best depends
# on how good $V$ is: trust it (small $\lambda$) when it is accurate, not when it is poor. In PPO for
# language models the value head starts untrained and the reward arrives only at the last token, so
# implementations use $\lambda$ close to 1 (0.95).
#
# ## 5. From bandits to language models: the log-probability of an answer
#
# A language model is a policy over tokens (notebook 1): the state is the prompt plus the answer so
# far, the action is the next token. The log-probability of a whole answer $y = (y_1, \dots, y_n)$ to a
# prompt $x$ is a sum over its tokens,
#
# $$\log \pi_\theta(y \mid x) = \sum_{t=1}^{n} \log \pi_\theta(y_t \mid x, y_{<t}),$$
#
# and with a single reward at the end of the answer ($\gamma = 1$) REINFORCE's loss for one answer is
# $-(R - b)\log \pi_\theta(y \mid x)$: exactly the bandit's, with an answer as the arm.
#
# A causal LM's forward pass over the sequence `input_ids` (prompt, then answer) returns `logits` of shape
# `(B, T, V)`, and **the logits at position t predict the token at t + 1**. So `log_softmax(logits[:, :-1])`
# is gathered at `input_ids[:, 1:]`, and only the answer's tokens count (`completion_mask`, 1 on the
# answer, 0 on the prompt and the padding).
#
# ### Exercise 2.4 — log pi(answer | prompt)
# *Difficulty ●●○ · importance: high (PPO's ratios, the KL penalty and DPO's implicit reward are all
# built on it) · about 10 minutes · checked against `rlhf_course.logprobs.sequence_logprob` on random
# logits (and logits of a few hundred), then on the tiny model against `logprobs.sequence_logprobs`.*
#
# **Mistakes the check names**: no shift (off by one); the prompt counted; the mask not shifted with the
# tokens; a mean instead of a sum; raw logits gathered; probabilities summed; no gradient to the logits;
# -inf at large logits (`log(softmax(x))`); `logits` changed in place.
#
# <details><summary>Hint 2 (shift, gather, mask, sum)</summary>
#
# `logp = F.log_softmax(logits[:, :-1], dim=-1)` (B, T-1, V); `logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)`
# is each next token's log-prob (B, T-1); multiply by `completion_mask[:, 1:]` and `.sum(dim=1)`.
#
# </details>

# %%
def sequence_logprob(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(completion | prompt) for each sequence: the sum over the completion's tokens of their log-prob.

    logits: (B, T, V) from the model's forward pass over input_ids (B, T); completion_mask: (B, T), 1 on the
    completion's tokens. Returns (B,).
    """
    B, T, V = logits.shape
    assert input_ids.shape == completion_mask.shape == (B, T)
    # SOLUTION
    # STUB return torch.zeros(B)
    # HINT the logits at position t are a prediction of the token at t + 1: line the two up before looking anything up
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)                          # (B, T-1, V): predicts tokens 1..T-1
    token_logp = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)   # (B, T-1)
    return (token_logp * completion_mask[:, 1:]).sum(dim=1)                     # (B,)
    # END SOLUTION


# %%
sequence_logprob = check_sequence_logprob(sequence_logprob)

# %% [markdown]
# ## 6. REINFORCE on the tiny language model
#
# Now the real thing, at toy scale. The reward is the toy world's ground truth
# (`toyworld.ground_truth_rewards`; in RLHF a learned reward model takes its place, notebook 5).
#
# > **A black box for now: the SFT model.** The policy starts from the course's *SFT model* (with a
# > fresh LoRA adapter, the only weights trained here): the tiny base model after supervised fine-tuning
# > on demonstrations of good answers. Notebook 3 opens this box - how it is trained, and why RLHF starts
# > from it. Here it is simply a better starting point than the base model, loaded ready-made with
# > `trained_models.sft_model(profile)`.
#
# On the `7b` profile there is no ground truth for free text: the reward is the independent judge
# (`gold.gold_reward_fn(profile)`, a 0.6B reward model loaded beside the 4-bit base), the prompts are the
# real preference set's (`evaluation.prompts_for`), the learning rate is the 7B recipe's
# (`profile.recipe.pg_learning_rate`), and the run is `profile.ppo_steps` steps of 4 answers, one answer
# per held-out prompt to evaluate (on a T4, an estimated half a minute per step; plus, the first time, the
# SFT adapter, which `trained_models.sft_model` trains on the real demonstrations if notebook 3 has not:
# an estimated 10-30 minutes). Memory, estimated: one 4-bit base with its adapter, under the PPO plan's
# 7.0 GiB (`rlhf-course memory --method ppo`), and the judge's 2.4 GB (fp32 on a T4).
#
# One step:
#
# 1. sample one answer for each of a batch of training prompts (`sampling.sample_ids`, at the profile's
#    temperature);
# 2. score the answers (one number per answer);
# 3. compute $\log \pi_\theta(y \mid x)$ with gradients (`logprobs.completion_logprobs`, summed over the answer, at
#    the sampling temperature);
# 4. the baseline of each answer is the mean reward of the *other* answers in the batch (the
#    leave-one-out baseline of RLOO, Ahmadian et al. 2024, arXiv:2402.14740: it does not depend on the
#    answer it is subtracted from, so it keeps the gradient unbiased);
# 5. a step on your `reinforce_loss`.

# %%
# NBVAL_IGNORE_OUTPUT
gold = gold_reward_fn(profile)                 # the toy world's ground truth; on the 7b profile, the judge
GOLD = "ground-truth" if profile.has_ground_truth else "judged"
sft_path = trained_models.sft_model(profile)   # the course's SFT model (on the 7b profile: the SFT adapter, trained once)
tokenizer = load_tokenizer(profile, sft_path)
torch.manual_seed(0)
policy = load_policy(profile, model_id=sft_path)   # + a fresh LoRA adapter: the only trained weights
before = evaluate_policy(policy, tokenizer, **protocol(profile, gold))   # the course's one evaluation protocol
print(f"mean {GOLD} reward on the held-out prompts before REINFORCE: {before.summary()['reward']:.3f}")

# %%
# NBVAL_IGNORE_OUTPUT
STEPS = min(30, profile.ppo_steps)                # 30; fewer where a step costs more (the 7b profile: its PPO iterations)
BATCH, LR = profile.batch_size, profile.recipe.pg_learning_rate  # 32 answers per step on the tiny profile, 4 on the 7b
optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=LR)
train_prompts = prompts_for(profile, "train")
gen = torch.Generator().manual_seed(0)
history = []
for step in range(STEPS):
    prompts = [train_prompts[i] for i in torch.randint(len(train_prompts), (BATCH,), generator=gen)]
    # 1. rollout: query (B, Tq) left-padded, response (B, Tr) right-padded after the end-of-answer token
    policy.eval()
    query, response, ended = sample_ids(policy, tokenizer, prompts, profile.max_new_tokens,
                                        temperature=profile.temperature)
    # 2. reward: one number per answer
    rewards = torch.tensor(gold(prompts, decode_responses(tokenizer, response, ended)))
    # 3. log pi(answer | prompt), with gradients
    policy.train()
    answer = answer_mask(response, tokenizer.eos_token_id)                        # (B, Tr)
    input_ids = torch.cat([query, response], dim=1)                               # (B, Tq + Tr)
    attention_mask = torch.cat([prompt_mask(query, tokenizer.pad_token_id), answer], dim=1)  # by position: pad may be eos
    completion = torch.cat([torch.zeros_like(query), answer], dim=1)
    logprobs = completion_logprobs(policy, input_ids.to(policy.device), attention_mask.to(policy.device),
                                   completion.to(policy.device), temperature=profile.temperature).sum(1)  # (B,)
    # 4. leave-one-out baseline, 5. the update
    baseline = (rewards.sum() - rewards) / (len(rewards) - 1)                     # (B,)
    loss = reinforce_loss(logprobs, rewards.to(logprobs.device), baseline.to(logprobs.device))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append({"step": step + 1, "reward": rewards.mean().item(), "loss": loss.item(),
                    "answer_tokens": answer.sum(1).float().mean().item()})
    if step % 10 == 0 or step == STEPS - 1:
        print(f"step {step + 1:3d}  mean reward {rewards.mean():+.3f}  answer length {history[-1]['answer_tokens']:.1f} tokens")

# %%
plot_training_curves(history, ["reward", "answer_tokens"], title="REINFORCE on the tiny LM (training batches)", smooth=0.6)

# %%
# NBVAL_IGNORE_OUTPUT
after = evaluate_policy(policy, tokenizer, **protocol(profile, gold))
r0, r1 = before.summary()["reward"], after.summary()["reward"]
print(f"held-out prompts: mean {GOLD} reward {r0:.3f} (SFT) -> {r1:.3f} (after {STEPS} REINFORCE steps)")
for s in after.samples[:3]:
    print(f"  {s.prompt!r} -> {s.completion.text!r}  reward {s.reward:+.2f}")

# %%
print(f"REINFORCE raised the held-out reward by more than 0.05: {r1 - r0 > 0.05}")

# %% [markdown]
# A few dozen steps of the simplest policy gradient already move the reward on prompts the policy
# never trained on. The answers also got longer: the toy world pays for each useful tip, so more tips
# is a real improvement here, but length is also the first thing a policy exploits when the reward
# comes from a model that merely *likes* long answers (the verbosity trap of notebook 6). Running
# REINFORCE longer keeps climbing for a while, then two problems show up that the rest of the course
# deals with:
#
# - **variance and step size**: one bad batch can push the policy far; PPO (notebook 6) reuses each batch
#   for several small, *clipped* steps and uses a learned value with GAE instead of a batch baseline;
# - **drift**: nothing keeps the policy close to the SFT model. With a *learned* reward model the
#   policy finds and exploits its mistakes (reward hacking); RLHF adds a KL penalty to the reference
#   model, and DPO (notebook 7) builds it into the objective.
#
# ## Summary
#
# - Policy-gradient theorem: $\nabla_\theta J = \mathbb{E}[\sum_t G_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)]$, from the
#   log-derivative trick; the REINFORCE loss is $-\text{mean}((G - b)\log \pi)$ with the weight detached.
# - A baseline that does not depend on the action keeps the gradient unbiased and can cut its variance by
#   orders of magnitude; with $b = V(s)$ the weight is the advantage.
# - Whitening normalises advantages over the real tokens of a padded batch.
# - GAE sums TD errors with weights $(\gamma\lambda)^l$: $\lambda = 0$ is the TD error (biased by $V$, low
#   variance), $\lambda = 1$ is $G - V$ (unbiased, noisy).
# - For a language model, $\log \pi(y \mid x)$ is the sum of the answer's token log-probs, read from logits
#   shifted by one; REINFORCE with it raises the tiny model's ground-truth reward.
#
# **Next**: notebook 3, supervised fine-tuning with LoRA and QLoRA: how the SFT model we started
# from was made.
