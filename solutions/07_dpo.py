# %% [markdown]
# # 7. DPO: preference optimisation without a reward model
#
# PPO (notebook 6) needed a reward model, sampling, a value head and a dozen implementation details.
# **Direct Preference Optimization** (Rafailov et al. 2023, arXiv:2305.18290) reaches the same
# objective with a classification loss on the preference pairs themselves: no reward model, no
# sampling during training. You will derive it, build it in layers (log-probs → loss → batch loss),
# check it against TRL's `DPOTrainer`, train with TRL, and learn to read DPO's logs, including the
# puzzling one: **the chosen answers' reward can fall while the model gets better**.
#
# **Learning goals**
# - derive DPO from the KL-regularised objective: the closed-form optimum
#   $\pi^* \propto \pi_{\mathrm{ref}} \exp(r/\beta)$, the reward it implies, and why the partition function cancels in
#   Bradley-Terry (Eq. 7);
# - implement the sequence log-probs (shift and mask), the DPO loss with its implicit rewards, the loss of
#   a batch with TRL's diagnostics, and the IPO loss;
# - check the from-scratch loss against TRL's `DPOTrainer` on the same batch;
# - train DPO with TRL and LoRA, read `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
#   `rewards/accuracies`, and explain why `rewards/chosen` can fall while the margins grow;
# - explain what $\beta$ does, and what IPO changes;
# - evaluate DPO against the SFT model (win rate, KL), and know what the 7B run needs on a T4.
#
# **Prerequisites**: notebook 5 (Bradley-Terry, reward models) and notebook 6 (the RLHF objective,
# KL to the reference). The SFT model loads from `rlhf_course.trained_models`.
#
# **Estimated time**: 60 minutes to work through. The notebook runs in about 1-2 minutes on a laptop
# CPU (tiny profile).

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import warnings

import datasets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging
from trl import DPOTrainer

from rlhf_course import dpo, gpu_memory, plots, trained_models
from rlhf_course.checks.nb07_dpo import check_dpo_batch_loss, check_dpo_loss, check_ipo_loss, check_sequence_logps
from rlhf_course.evaluation import evaluate_policy, protocol
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import free_memory, load_tokenizer, policy_for_trainer, reference_policy
from rlhf_course.logprobs import token_logprobs
from rlhf_course.sampling import generate

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*padding-free.*")  # TRL's advice for GPUs with flash attention
datasets.disable_progress_bars()
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# %% [markdown]
# ## 1. From the RLHF objective to a classification loss
#
# Start where notebook 6 started, with the KL-regularised objective, for one prompt $x$:
#
# $$\max_\pi\; \mathbb{E}_{y \sim \pi(\cdot \mid x)}\big[r(x, y)\big] - \beta\, \mathrm{KL}\big(\pi(\cdot \mid x) \,\|\, \pi_{\mathrm{ref}}(\cdot \mid x)\big).$$
#
# **Step 1: the optimum has a closed form.** Define $Z(x) = \sum_y \pi_{\mathrm{ref}}(y \mid x)\, e^{r(x, y)/\beta}$ and
# $\pi^*(y \mid x) = \pi_{\mathrm{ref}}(y \mid x)\, e^{r(x, y)/\beta} / Z(x)$, a probability distribution. Then
#
# $$\mathbb{E}_{\pi}\Big[r - \beta \log \frac{\pi}{\pi_{\mathrm{ref}}}\Big] = -\beta\, \mathbb{E}_{\pi}\Big[\log \frac{\pi(y \mid x)}{\pi_{\mathrm{ref}}(y \mid x)\, e^{r(x, y)/\beta}}\Big] = -\beta\, \mathrm{KL}\big(\pi \,\|\, \pi^*\big) + \beta \log Z(x).$$
#
# $Z(x)$ does not depend on $\pi$, and a KL is $\ge 0$ with equality only at $\pi = \pi^*$: **the optimum is
# $\pi^*$** (DPO, Eq. 4). We cannot use it directly: $Z(x)$ sums over every possible answer.
#
# **Step 2: solve for the reward.** Take logs and rearrange (Eq. 5):
#
# $$r(x, y) = \beta \log \frac{\pi^*(y \mid x)}{\pi_{\mathrm{ref}}(y \mid x)} + \beta \log Z(x).$$
#
# Every reward function corresponds to an optimal policy, and the policy determines the reward up to
# $\beta \log Z(x)$, a term that depends on the prompt only.
#
# **Step 3: plug it into Bradley-Terry** (notebook 5): $P(y_w \succ y_l \mid x) = \sigma\big(r(x, y_w) - r(x, y_l)\big)$.
# Both answers answer the same prompt, so **$\beta \log Z(x)$ cancels** in the difference:
#
# $$P(y_w \succ y_l \mid x) = \sigma\Big(\beta \log \frac{\pi^*(y_w \mid x)}{\pi_{\mathrm{ref}}(y_w \mid x)} - \beta \log \frac{\pi^*(y_l \mid x)}{\pi_{\mathrm{ref}}(y_l \mid x)}\Big).$$
#
# **Step 4: fit a policy by maximum likelihood.** Put a trainable $\pi_\theta$ in the place of $\pi^*$ and
# minimise the negative log-likelihood of the labels, exactly as for a reward model. This is **Eq. 7**:
#
# $$\mathcal{L}_{\mathrm{DPO}}(\theta) = -\,\mathbb{E}_{(x, y_w, y_l) \sim D}\Big[\log \sigma\Big(\beta \log \frac{\pi_\theta(y_w \mid x)}{\pi_{\mathrm{ref}}(y_w \mid x)} - \beta \log \frac{\pi_\theta(y_l \mid x)}{\pi_{\mathrm{ref}}(y_l \mid x)}\Big)\Big].$$
#
# The policy is its own reward model: $\hat r_\theta(x, y) = \beta \log \frac{\pi_\theta(y \mid x)}{\pi_{\mathrm{ref}}(y \mid x)}$
# is the **implicit reward** (Sec. 5), and TRL logs it as `rewards/chosen` and `rewards/rejected`.
# Its gradient (Sec. 4) raises $\log \pi_\theta(y_w)$ and lowers $\log \pi_\theta(y_l)$, each pair weighted by
# $\sigma(\hat r_\theta(y_l) - \hat r_\theta(y_w))$: how wrong the implicit reward currently ranks it.
#
# The code comes in layers, as `rlhf_course/dpo.py` has them:
#
# | layer | package | you write |
# |---|---|---|
# | 1. log-probs of a batch | `dpo.preference_logps`, `dpo.reference_logps` | `sequence_logps` (7.1) |
# | 2. the loss | `dpo.dpo_loss` | `dpo_loss` (7.2) |
# | 3. a batch, with TRL's diagnostics | `dpo.dpo_batch_loss` | `dpo_batch_loss` (7.3) |
# | 4. training | `dpo.train_dpo` (TRL's `DPOTrainer` + LoRA) | |

# %% [markdown]
# ## 2. Layer 1: the log-probability of an answer
#
# $\log \pi(y \mid x) = \sum_t \log \pi(y_t \mid x, y_{<t})$: one forward pass over prompt + answer, the
# log-softmax of the logits, the log-prob of each actual next token, summed **over the answer's tokens
# only**. TRL's collator lays a batch of $B$ pairs out as $2B$ right-padded rows (prompt + chosen, then
# prompt + rejected) with a `completion_mask` that is 1 on the answer's tokens (its closing `<|end|>`
# included). Let us get such a batch from TRL itself, on the SFT model with a LoRA adapter. A fresh
# adapter leaves the model unchanged, so we give it random weights, as if it had trained a little.
# (On the `7b` profile the pairs are the real preference set's, the training split of notebook 5's
# reward model, and the adapter is notebook 3's SFT adapter itself, which training continues; TRL keeps
# a frozen copy of it, "ref", as the reference: `loading.policy_for_trainer`.)

# %%
# NBVAL_IGNORE_OUTPUT
sft_path = trained_models.sft_model(profile)                        # notebook 3's SFT model: pi_ref
tokenizer = load_tokenizer(profile, sft_path)
pairs = dpo.keep_dpo_columns(dpo.load_dpo_data() if profile.has_ground_truth      # the toy world's 4,000 pairs,
                             else trained_models.preference_split(profile)[0])    # or the real set's training pairs
print(pairs[0])
trl_model, trl_peft_config = policy_for_trainer(profile, sft_path, verbose=False)  # + a LoRA adapter for TRL
trl_trainer = DPOTrainer(model=trl_model, args=dpo.dpo_config(profile.replace(batch_size=8), steps=1, progress=False),
                         train_dataset=pairs.select(range(min(64, len(pairs)))), processing_class=tokenizer,
                         peft_config=trl_peft_config)
model = trl_trainer.model                                         # the PEFT model TRL trains
torch.manual_seed(0)
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_B" in name and param.requires_grad:              # the adapter being trained (not TRL's frozen "ref")
            param.add_(torch.randn_like(param) * 0.02)            # as if it had trained a few steps
model.eval()
batch = next(iter(trl_trainer.get_train_dataloader()))            # made by TRL's DataCollatorForPreference

# %%
print({k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v)})
row = batch["input_ids"][0]
print("prompt + chosen:", tokenizer.decode(row[batch["attention_mask"][0].bool()]))
print("the answer part:", tokenizer.decode(row[batch["completion_mask"][0].bool()]))


# %% [markdown]
# ### Exercise 7.1 — the log-probability of each answer
# Difficulty ●○○ · importance: high (every preference loss starts here) · about 10 minutes.
#
# Implement `sequence_logps(model, input_ids, attention_mask, completion_mask)` → (B,): the summed
# log-probabilities of the answer's tokens. The logits at position $t$ predict token $t+1$: shift them,
# and shift the mask with them. `token_logprobs(logits, labels)` (imported) gathers the log-softmax at
# the labels.
#
# *Checked by* `check_sequence_logps`: against `rlhf_course.logprobs.sequence_logprobs` (same signature)
# on the tiny model and a toy preference batch.
#
# **Mistakes the check names**: no shift; the mask off by one; the prompt and the padding summed; the
# attention mask used instead of the completion mask; a mean instead of a sum; probabilities summed; an
# input changed in place.
#
# <details><summary>Hint 2 (three lines)</summary>
#
# `logits = model(input_ids=input_ids, attention_mask=attention_mask).logits`;
# `logps = token_logprobs(logits[:, :-1], input_ids[:, 1:])` (B, T-1); `(logps * completion_mask[:, 1:]).sum(dim=1)`.
#
# </details>

# %%
def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(answer | prompt) for each row: (B, T) inputs -> (B,)."""
    assert input_ids.shape == attention_mask.shape == completion_mask.shape
    # SOLUTION
    # HINT the logits at t predict token t + 1: shift the logits, the tokens and the mask alike
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits   # (B, T, V)
    logps = token_logprobs(logits[:, :-1], input_ids[:, 1:])                     # (B, T-1): log p(token t + 1)
    return (logps * completion_mask[:, 1:]).sum(dim=1)                           # (B,) answer tokens only
    # END SOLUTION


# %%
sequence_logps = check_sequence_logps(sequence_logps)

# %% [markdown]
# The package's `dpo.preference_logps(model, batch)` does the same in one forward pass over all $2B$
# rows and splits them into chosen and rejected; `dpo.reference_logps` runs it **with the LoRA adapter
# switched off**: the reference policy is the SFT model inside the same weights, no second copy.

# %%
with torch.no_grad():
    chosen_logps, rejected_logps = dpo.preference_logps(model, batch)      # (B,), (B,)
    ref_chosen_logps, ref_rejected_logps = dpo.reference_logps(model, batch)
print(f"{len(chosen_logps)} pairs; the reference gives the chosen answer the higher probability in "
      f"{(ref_chosen_logps > ref_rejected_logps).sum().item()} of them")


# %% [markdown]
# ## 3. Layer 2: the loss, and the implicit rewards
#
# ### Exercise 7.2 — the DPO loss (Eq. 7)
# Difficulty ●○○ · importance: high · about 10 minutes.
#
# Implement `dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta)`
# returning `(loss, chosen_rewards, rejected_rewards)`, as `dpo.dpo_loss` does: the mean of Eq. 7 over the
# pairs, and the implicit rewards $\beta (\log \pi_\theta - \log \pi_{\mathrm{ref}})$ of both answers, each
# (B,) and **detached** (they are diagnostics to log, not part of the graph).
#
# *Checked by* `check_dpo_loss`: value, rewards and gradients against `dpo.dpo_loss` on random log-probs
# for three betas, and on a pair ranked wrong by 600 nats.
#
# **Mistakes the check names**: beta outside the sigmoid; beta missing, or fixed; the reference added
# instead of subtracted; the reference missing; chosen and rejected swapped; the log missing; a sum
# instead of a mean; the sign of the loss flipped; an infinite loss at a wide gap (`-log(sigmoid(x))`);
# rewards without beta, or not detached; no gradient; an input changed in place.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `chosen_logratios = policy_chosen_logps - ref_chosen_logps`, the same for the rejected answers;
# `loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()`; the rewards are
# `beta * chosen_logratios.detach()` and `beta * rejected_logratios.detach()`.
#
# </details>

# %%
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO, Eq. 7 of arXiv:2305.18290. All inputs (B,). Returns (loss, chosen_rewards (B,), rejected_rewards (B,))."""
    assert policy_chosen_logps.shape == policy_rejected_logps.shape == ref_chosen_logps.shape == ref_rejected_logps.shape
    # SOLUTION
    # HINT Bradley-Terry's negative log-likelihood, with the implicit reward beta * log(pi / pi_ref) as the reward
    chosen_logratios = policy_chosen_logps - ref_chosen_logps               # (B,) log pi(y_w) / pi_ref(y_w)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps         # (B,) log pi(y_l) / pi_ref(y_l)
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    # END SOLUTION


# %%
dpo_loss = check_dpo_loss(dpo_loss)

# %% [markdown]
# Two values to know by heart. When the policy **is** the reference (the first training step), every
# log-ratio is 0 and the loss is $-\log \sigma(0) = \log 2 \approx 0.693$, whatever the data. And the
# loss only sees the **difference** of the two log-ratios: nothing in it says that the chosen answer's
# own probability must go up. Section 6 comes back to that.

# %%
same = torch.tensor([-12.0, -30.0])
loss_at_start, _, _ = dpo.dpo_loss(same, same - 3, same, same - 3, beta=0.1)
print(f"loss when pi = pi_ref: {loss_at_start.item():.4f}  (log 2 = {torch.log(torch.tensor(2.0)).item():.4f})")


# %% [markdown]
# ## 4. Layer 3: the loss of a batch, with TRL's diagnostics
#
# ### Exercise 7.3 — `dpo_batch_loss`
# Difficulty ●●○ · importance: high (this is what a DPO trainer computes at each step) · about 15 minutes.
#
# Put layers 1 and 2 together: `dpo_batch_loss(model, batch, *, beta)` → `(loss, metrics)`. The first half of
# the $2B$ rows are the chosen answers, the second half the rejected ones (`tensor.chunk(2)`). The
# reference log-probs come from the same model **with its adapter switched off**
# (`with model.disable_adapter():`) and need no gradient. `metrics` holds floats, the batch means that
# TRL logs under these names:
# `rewards/chosen`, `rewards/rejected`, `rewards/accuracies` (the share of pairs whose chosen reward is
# higher), `rewards/margins` (chosen minus rejected reward).
#
# *Checked by* `check_dpo_batch_loss`: against `dpo.dpo_batch_loss` on the tiny model and a toy batch, with
# a moved adapter for two betas, and at the first step (a fresh adapter: the policy is the reference and
# every pair ties).
#
# **Mistakes the check names**: a reference that is still the policy (margins exactly 0); ties counted as
# right (`>=`: TRL logs an accuracy of 0 at the first step); accuracies or margins the wrong way round; a
# loss off the reference; no gradient, or none reaching the adapter; the batch changed in place.
#
# <details><summary>Hint 2 (the layers)</summary>
#
# `chosen_logps, rejected_logps = sequence_logps(model, input_ids, attention_mask, completion_mask).chunk(2)`;
# the same inside `with torch.no_grad(), model.disable_adapter():` for the reference; then
# `dpo_loss(..., beta=beta)`. `rewards/accuracies` is `(chosen_rewards > rejected_rewards).float().mean().item()`.
#
# </details>

# %%
def dpo_batch_loss(model, batch: dict, *, beta: float) -> tuple[torch.Tensor, dict]:
    """DPO on one collated batch (2B rows: B chosen, then B rejected). Returns (loss, metrics)."""
    input_ids, attention_mask, completion_mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    assert input_ids.shape[0] % 2 == 0, "2B rows: prompt + chosen, then prompt + rejected"
    # SOLUTION
    # HINT the rows are pairs cut in two halves. And pi_ref: which weights of this PEFT model are the SFT model?
    chosen_logps, rejected_logps = sequence_logps(model, input_ids, attention_mask, completion_mask).chunk(2)
    with torch.no_grad(), model.disable_adapter():                          # pi_ref: the model we started from
        ref_chosen_logps, ref_rejected_logps = sequence_logps(model, input_ids, attention_mask,
                                                              completion_mask).chunk(2)
    loss, chosen_rewards, rejected_rewards = dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps,
                                                      ref_rejected_logps, beta=beta)
    metrics = {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
    }
    return loss, metrics
    # END SOLUTION


# %%
dpo_batch_loss = check_dpo_batch_loss(dpo_batch_loss)

# %% [markdown]
# **Ours against TRL's.** TRL's `DPOTrainer.compute_loss` computes the same loss inline (with a fused
# log-prob head that never materialises the full logits). On the batch TRL made, with the same adapter:

# %%
# NBVAL_IGNORE_OUTPUT
beta = trl_trainer.args.beta
with torch.no_grad():
    trl_loss = trl_trainer.compute_loss(model, batch).item()
    our_loss, our_metrics = dpo.dpo_batch_loss(model, batch, beta=beta)
print(f"beta {beta}: TRL {trl_loss:.6f} | ours {our_loss.item():.6f} | difference {abs(trl_loss - our_loss.item()):.1e}")
print({k: round(v, 4) for k, v in our_metrics.items()})

# %%
print(f"our loss equals TRL's to 1e-5: {abs(trl_loss - our_loss.item()) < 1e-5}")

# %%
del trl_trainer, trl_model, model, batch   # free the comparison model before training (a T4 holds one 4-bit 7B)
free_memory()

# %% [markdown]
# ## 5. Layer 4: training with TRL's `DPOTrainer`
#
# `dpo.train_dpo` is TRL's `DPOTrainer` with a LoRA adapter on the SFT model; the reference is the same
# model with the adapter disabled. On the tiny profile: 60 steps of 32 pairs ($\beta = 1$, learning rate
# 3e-3: section 7 explains the large $\beta$), about 25 seconds on 2 quiet CPU cores. We give it the
# pairs it will see (60 × 32), so that TRL tokenises no more than it needs.

# %%
# NBVAL_IGNORE_OUTPUT
DPO_STEPS = profile.dpo_steps
train_pairs = pairs.select(range(min(len(pairs), DPO_STEPS * profile.batch_size * profile.gradient_accumulation_steps)))
result = dpo.train_dpo(profile, train_pairs, model_id=sft_path, steps=DPO_STEPS, seed=0)
dpo_model = result.model
print({k: round(v, 3) for k, v in result.metrics.items()})

# %%
plots.plot_dpo_rewards(result.history, smooth=0.5, title=f"DPO, {DPO_STEPS} steps (TRL DPOTrainer + LoRA)")

# %%
plots.plot_training_curves(result.history, ["loss", "logps/chosen", "logps/rejected"], smooth=0.5,
                           title="DPO: the loss, and the log-probabilities of the answers")

# %% [markdown]
# ## 6. Why `rewards/chosen` can fall while the margins grow
#
# The plots show what surprises everyone the first time: the accuracy rises, the margin
# (`rewards/chosen - rewards/rejected`) grows, the loss falls, and yet `rewards/chosen`, the implicit
# reward of the answers the labellers **preferred**, drops below 0. In log-probabilities: both
# `logps/chosen` and `logps/rejected` fall; the rejected ones fall faster.

# %%
first, last = result.history[:3], result.history[-5:]
mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
print(f"margins grew: {mean(last, 'rewards/margins') > mean(first, 'rewards/margins')}")
print(f"accuracies above chance at the end: {mean(last, 'rewards/accuracies') > 0.5}")
print(f"rewards/chosen below 0 at the end (pi(y_w) < pi_ref(y_w)): {mean(last, 'rewards/chosen') < 0}")
print(f"log pi of the chosen answers fell: {mean(last, 'logps/chosen') < mean(first, 'logps/chosen')}")

# %% [markdown]
# Nothing is broken. The loss depends only on the **difference** $\hat r(y_w) - \hat r(y_l)$; it is
# equally happy to get there by lowering both, as long as $y_l$ drops more. And the gradient does push
# both down in practice:
# - **Shared tokens.** Chosen and rejected answers to the same prompt share most of their tokens (in the
#   toy world: the same tips and filler sentences, in another order or number). Lowering the rejected
#   answer's tokens lowers the same tokens in the chosen one.
# - **Probability has to go somewhere.** Pushing down $\pi(y_l)$ frees mass; nothing sends it to $y_w$
#   in particular. It flows to other answers, **outside the data set**, which may be better (then the
#   ground truth rises anyway, as in section 8) or worse. Razin et al. 2024 call this **likelihood
#   displacement** ("Unintentional unalignment", arXiv:2410.08847); Pal et al. 2024 (Smaug / DPO-Positive,
#   arXiv:2402.13228) and Feng et al. 2024 (arXiv:2404.04626) analyse the same effect, and Rafailov et al.
#   2024 ("From r to Q*", arXiv:2404.12358) show that falling chosen likelihoods are expected after SFT.
# - **Off-policy data.** The pairs were not sampled from this model; many chosen answers are unlikely
#   under it to begin with, and DPO has no reason to make them likely, only more likely than their rival.
#
# So read DPO's logs by the **margins and accuracies**, never by `rewards/chosen` alone, and judge the
# policy by what it generates (next section). Remedies when the displacement hurts: add an SFT term on
# the chosen answers (RPO, Pang et al. 2024, arXiv:2404.19733; TRL's `rpo_alpha`) or DPO-Positive's
# penalty.

# %% [markdown]
# ## 7. What $\beta$ does, and IPO
#
# $\beta$ is the KL coefficient of the objective we started from. In the loss it sets how large a
# log-ratio gap $h = \log\frac{\pi(y_w)}{\pi_{\mathrm{ref}}(y_w)} - \log\frac{\pi(y_l)}{\pi_{\mathrm{ref}}(y_l)}$
# must be before a pair stops contributing: $-\log\sigma(\beta h)$ is flat once $\beta h \gtrsim 3$, so
# the model stops moving after a gap of about $3/\beta$ nats. **Small $\beta$**: the policy must move far
# from the reference to satisfy the loss (more drift, more risk of degenerate text). **Large $\beta$**:
# a small gap suffices; the policy stays close. The tiny model, with a learning rate high enough to move
# in 60 steps, turned out garbled sentences with the paper's usual $\beta = 0.1$; $\beta = 1$ stops it
# after a few nats (`profile.recipe.dpo_beta`; over three seeds it also beat $\beta = 2$ on the ground truth,
# `benchmarks/learning_levers.md`). The 7B recipe (`profile.recipe.dpo_beta`) uses 0.01, with a far
# smaller learning rate. The curves, from `dpo.dpo_loss`:

# %%
gap = torch.linspace(-5, 15, 201)                                  # h: chosen log-ratio minus rejected log-ratio
fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
for b in (0.1, 0.5, 2.0):
    losses = [dpo.dpo_loss(h.view(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=b)[0].item() for h in gap]
    ax.plot(gap, losses, label=f"DPO, β = {b}")
ipo = [dpo.dpo_loss(h.view(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1, loss_type="ipo")[0].item() / 10
       for h in gap]
ax.plot(gap, ipo, color="gray", ls="--", label="IPO, τ = 0.1: target 1/(2τ) = 5 (÷ 10)")
ax.set(xlabel="log-ratio gap h (nats)", ylabel="loss per pair", title="The loss as a function of the gap", ylim=(0, 3))
ax.legend(fontsize="small")
ax.grid(alpha=0.3)
plt.close(fig)
fig


# %% [markdown]
# **IPO** (Azar et al. 2023, "A general theoretical paradigm to understand learning from human
# preferences", arXiv:2310.12036). DPO's loss keeps falling as long as $h$ grows: on pairs that are
# always labelled the same way (deterministic preferences), its optimum is $h \to \infty$, i.e.
# $\pi(y_l) \to 0$ whatever $\beta$ says, and the KL regularisation stops working. IPO replaces the
# log-sigmoid with a **regression** of the gap onto a finite target (Eq. 17):
#
# $$\mathcal{L}_{\mathrm{IPO}} = \mathbb{E}\Big[\big(h - \tfrac{1}{2\tau}\big)^2\Big].$$
#
# It pulls the gap to $1/(2\tau)$ and pushes back if it overshoots (the dashed curve). TRL has it as
# `loss_type="ipo"` (and divides each log-ratio by the answer's length, a per-token version;
# `dpo.dpo_loss(..., loss_type="ipo")` does the same when it is given the lengths).
#
# ### Exercise 7.4 — the IPO loss
# Difficulty ●○○ · importance: medium · about 5 minutes.
#
# Implement `ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau)`
# → the scalar mean of Eq. 17 as printed (no length normalisation).
#
# *Checked by* `check_ipo_loss`: against `dpo.dpo_loss(..., loss_type="ipo")` without lengths, for three
# values of $\tau$, none where two of the targets below coincide (at $\tau = 0.5$, $2\tau = 1/(2\tau)$).
#
# **Mistakes the check names**: a wrong target ($1/\tau$, $2\tau$, $\tau/2$); the target's sign flipped;
# the difference not squared; plain log-probs instead of log-ratios; DPO's loss in IPO's place; a sum
# instead of a mean; no gradient; an input changed in place.
#
# <details><summary>Hint 2 (the line)</summary>
#
# With `h` as in the hint, the loss is `((h - 1 / (2 * tau)) ** 2).mean()`.
#
# </details>

# %%
def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, tau: float) -> torch.Tensor:
    """IPO, Eq. 17 of arXiv:2310.12036: mean over pairs of (h - 1 / (2 tau))^2. All inputs (B,)."""
    assert policy_chosen_logps.shape == policy_rejected_logps.shape == ref_chosen_logps.shape == ref_rejected_logps.shape
    # SOLUTION
    # HINT h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)); IPO regresses it onto a target
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)  # (B,)
    return ((h - 1 / (2 * tau)) ** 2).mean()
    # END SOLUTION


# %%
ipo_loss = check_ipo_loss(ipo_loss)

# %% [markdown]
# ## 8. Evaluation against the SFT model
#
# Logs measure the training pairs; what matters is what the policy **generates** on prompts it has not
# seen. As in notebook 6: 4 answers per held-out prompt at the profile's temperature, the SFT model being
# the same weights with the adapter switched off, judged by the toy world's ground truth; KL to the SFT
# model on DPO's own answers. (On the `7b` profile: one answer per held-out real prompt, judged by the
# independent judge, `gold.gold_reward_fn`, loaded only now: 2.4 GB beside the 4-bit base, after the
# training's peak of section 9's plan, estimated; the SFT model is the frozen "ref" copy of its adapter,
# `loading.reference_policy`.)

# %%
# NBVAL_IGNORE_OUTPUT
gold = gold_reward_fn(profile)                                       # the ground truth, or the judge
eval_kw = protocol(profile, gold)                                      # the course's one evaluation protocol
with reference_policy(dpo_model):                                      # the SFT model, from the same weights
    sft_eval = evaluate_policy(dpo_model, tokenizer, **eval_kw)
dpo_eval = evaluate_policy(dpo_model, tokenizer, reference="self", baseline=sft_eval, **eval_kw)
sft_summary, dpo_summary = sft_eval.summary(), dpo_eval.summary()
for key in ("reward", "helpful", "harmless", "length", "well_formed", "sycophancy"):
    if key in dpo_summary:  # the toy world's attributes exist on the tiny profile only
        print(f"{key:>12}: SFT {sft_summary[key]:6.2f}   DPO {dpo_summary[key]:6.2f}")
print(f"{'KL to SFT':>12}: {dpo_summary['kl']:.2f} nats per answer;  win rate vs SFT: {dpo_summary['win_rate']:.2f}")

# %%
print(f"DPO moved away from the SFT model (KL > 0): {dpo_summary['kl'] > 0}")
if profile.has_ground_truth:
    print(f"DPO's answers still end and parse (well-formed > 90%): {dpo_summary['well_formed'] > 0.9}")
else:
    print(f"DPO's answers still end (ended > 90%): {dpo_summary['ended'] > 0.9}  (well-formed is a toy-world measure)")

# %%
plots.plot_reward_distributions({"SFT": sft_eval, "DPO": dpo_eval},
                                title=f"{'Ground-truth' if profile.has_ground_truth else 'Judged'} reward per answer (held-out prompts)")

# %% [markdown]
# Compare with notebook 6. In the runs stored in these two notebooks, 60 steps of DPO gained as much
# ground-truth reward as 25 iterations of PPO (0.49 and 0.48), at a smaller KL to the SFT model (1.3 against
# 1.9 nats); $\beta = 1$ also left 5 % of the answers no longer well formed. Over the whole pipeline (100 PPO
# iterations, three seeds: the README's table) PPO is ahead. Two reasons DPO tends to gain less per run: it learns from a
# **fixed** set of pairs sampled from other policies (off-policy), while PPO learns from its own fresh
# samples and a reward model that scores them; and DPO's loss is satisfied by the margin on the data set,
# not by the quality of what the model generates. In exchange, DPO needs no reward model, no sampling and
# no value head: one forward pass of the policy and one of the reference per pair. (It is not immune to
# over-optimisation either: its implicit reward can be hacked too, Rafailov et al. 2024, arXiv:2406.02900.) Its online variants (sample, label with a judge, train again: notebook 8's
# iterative loop, and Guo et al. 2024's online AI feedback, arXiv:2402.04792) close much of the gap.
#
# **Question.** DPO never saw the toy world's ground truth, and neither did PPO. What, in each method,
# stands between the labellers' choices and the policy? Which one can be inspected on its own?
#
# <!-- SOLUTION -->
# PPO: an explicit reward model, trained on the labels, which then scores the policy's new answers. It
# can be evaluated on its own (held-out accuracy against the Bayes limit, what it rewards, its biases)
# before any policy is trained. DPO: nothing explicit; the labels shape the policy's log-ratios directly,
# and its implicit reward $\beta \log \pi_\theta / \pi_{\mathrm{ref}}$ exists only inside the policy (it can
# still be measured: `rewards/accuracies` on held-out pairs).
# <!-- END SOLUTION -->

# %% [markdown]
# ## 9. The 7B run
#
# On the `7b` profile the same `dpo.train_dpo` call trains Zephyr-7B-β (a Mistral-7B chat model) in
# 4-bit NF4, continuing notebook 3's SFT adapter: 100 steps of 16 pairs (4 per step × 4 of gradient
# accumulation), $\beta = 0.01$, learning rate 5e-6 (`profile.recipe`: the alignment-handbook's Zephyr
# QLoRA DPO recipe), on the real preference set's training pairs (section 2 loads them). What a T4 needs
# to know:
# - **no bf16 on a T4**: the profile computes in fp16 (mixed precision with loss scaling) and keeps the
#   LoRA weights in **fp32**. TRL casts QLoRA adapters to bf16; `loading.keep_trainable_fp32`
#   casts them back. DPO in pure fp16 (fp16 trainable weights, no fp32 master copy) is known to collapse:
#   the loss sticks at $\log 2 \approx 0.693$ and the rewards turn NaN.
# - **the reference costs almost no memory**: it is a frozen copy of the SFT adapter on the same 4-bit
#   base, one extra forward pass per step without gradients.
# - the peak, added up term by term by `rlhf_course.gpu_memory` (estimates from exact byte counts; not yet
#   measured on a T4):

# %%
print(gpu_memory.plan("zephyr-7b", "dpo", "t4").table())

# %% [markdown]
# Time on a T4 (an estimate, not a measurement): each step runs chosen and rejected through a 4-bit 7B
# with gradient checkpointing, plus the reference pass: roughly half a minute per step, so about an hour
# for the profile's 100 steps. On the `7b` profile every cell above ran with those numbers; the cell
# below adds the measured peak memory and an answer of the DPO policy, scored by the judge.

# %%
if not profile.has_ground_truth:  # the 7b profile
    if profile.device == "cuda":
        print(f"peak GPU memory during this notebook: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB "
              f"(plan: {gpu_memory.plan('zephyr-7b', 'dpo', 't4').total_gib:.1f} GiB on a T4)")
    reply = generate(dpo_model, tokenizer, ["how do i cook rice ?"], profile.max_new_tokens,
                     temperature=profile.temperature, seed=0)[0]
    print(f"{reply.text}\n  [judge {gold(['how do i cook rice ?'], [reply])[0]:+.2f}]")
else:
    print("tiny profile: the 7B run is skipped (run this notebook on a Colab T4 to see it)")

# %% [markdown]
# ## 10. What to remember
#
# - The KL-regularised objective has a closed-form optimum $\pi^* \propto \pi_{\mathrm{ref}}\, e^{r/\beta}$;
#   solving it for $r$ and putting it into Bradley-Terry cancels the partition function and gives
#   DPO's loss, Eq. 7: a logistic regression on $\beta$ times the difference of two log-ratios.
# - The policy is its own reward model: $\hat r = \beta \log \pi_\theta / \pi_{\mathrm{ref}}$. TRL logs it as
#   `rewards/chosen`, `rewards/rejected`, and their `margins` and `accuracies`.
# - The reference is the SFT model, here the same weights with the LoRA adapter off. A reference that
#   trains along (or is the policy itself) makes every margin 0: a silent bug.
# - `rewards/chosen` can fall while the model improves: the loss only sees the margin, and probability
#   mass moves to answers outside the data. Judge the policy by its generations.
# - $\beta$ sets how far the policy may move; IPO bounds the gap that deterministic preferences would
#   push to infinity.
# - On a T4: 4-bit base, LoRA in fp32, fp16 compute; never pure fp16.
#
# **Next**: notebook 8 goes beyond: best-of-N and rejection sampling, GRPO, AI feedback, and how to
# evaluate a policy for what matters (win rate, KL, refusals, sycophancy).
