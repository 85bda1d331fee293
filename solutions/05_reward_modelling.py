# %% [markdown]
# # 5. Reward modelling: learning what people prefer
#
# Notebook 4 collected preferences: for a prompt $x$, a labeller chose $y_c$ over $y_r$. PPO (notebook 6)
# needs something else: a **number** for any answer, including answers nobody has labelled. A reward model
# $r_\theta(x, y)$ turns the preferences into that number. In this notebook you derive its loss, train
# one with TRL, look at what it learned, and combine two of them as Llama 2 does.
#
# **Learning goals**
# - derive the Bradley-Terry model from noisy utilities (and from pairwise odds), and from it the reward
#   model's loss $-\log\sigma(r_c - r_r)$ (InstructGPT, Eq. 1);
# - implement that loss, the preference accuracy, and Llama 2's margin loss, and check them against the package;
# - explain why no reward model reaches 100% accuracy on noisy labels, and compute the best one can do (the Bayes limit);
# - train a reward model with TRL's `RewardTrainer` and LoRA, and read its training curves;
# - look inside a reward model: its score distributions, its accuracy against the Bayes limit, and what
#   it rewards (tips? filler? length?);
# - combine a helpfulness and a safety reward model with Llama 2's rule;
# - recognise the two classic failures: an over-fitted reward model, and labellers who disagree or share a bias.
#
# **Prerequisites**: notebook 3 (the SFT model this reward model starts from) and notebook 4 (preference
# data, the Bradley-Terry labeller). No GPU is needed.
#
# **Estimated time**: 60 minutes to work through. The notebook runs in about 1-2 minutes on a laptop
# CPU (tiny profile). On the `7b` profile (a T4) the reward models train on a slice of a real preference
# set from the SFT adapter, one 4-bit model at a time (8.4 GiB, `rlhf-course memory --method rm`): an
# estimated 30-60 minutes, not measured yet (plus the SFT adapter, if
# notebook 3 has not trained it).

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import math
import warnings

import datasets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

import rlhf_course.reward_model as rm
from rlhf_course import toyworld, trained_models
from rlhf_course.checks.nb05_reward_modelling import (check_bayes_accuracy, check_bradley_terry_loss,
                                                      check_combine_rewards, check_margin_loss,
                                                      check_preference_accuracy)
from rlhf_course.loading import free_memory, load_tokenizer
from rlhf_course.paths import data_path
from rlhf_course.plots import plot_training_curves
from rlhf_course.preferences import load_preferences
from rlhf_course.profiles import pick_profile

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=DeprecationWarning)
datasets.disable_progress_bars()
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# %% [markdown]
# ## 1. From preferences to a reward: the Bradley-Terry model
#
# We want a function $r(x, y)$ such that a labeller tends to prefer the answer with the higher reward.
# Two classic arguments lead to the same formula.
#
# **Route 1: noisy utilities.** Say the labeller feels a utility $U(y) = r(x, y) + \varepsilon_y$: the
# answer's true worth plus noise of the moment, with the $\varepsilon$ drawn independently from the
# standard Gumbel distribution (the usual choice in discrete-choice models, McFadden 1974). They prefer
# $y_c$ when $U(y_c) > U(y_r)$. The difference of two independent standard Gumbel variables follows the
# standard **logistic** distribution, whose CDF is the sigmoid $\sigma(z) = 1/(1+e^{-z})$. So
#
# $$P(y_c \succ y_r \mid x) = P\big(\varepsilon_r - \varepsilon_c < r(x, y_c) - r(x, y_r)\big) = \sigma\big(r(x, y_c) - r(x, y_r)\big).$$
#
# (Gaussian noise instead gives Thurstone's 1927 model, with the normal CDF in place of $\sigma$.
# Noise with scale $T$ gives $\sigma(\Delta r / T)$: notebook 4's labeller temperature.)
#
# **Route 2: pairwise odds.** Bradley and Terry (1952) give each answer a positive strength $p_y$ and
# say $y_i$ beats $y_j$ with probability $p_i / (p_i + p_j)$. Write $p_y = e^{r(x, y)}$:
#
# $$P(y_c \succ y_r) = \frac{e^{r_c}}{e^{r_c} + e^{r_r}} = \frac{1}{1 + e^{-(r_c - r_r)}} = \sigma(r_c - r_r),$$
#
# so the reward gap is the **log-odds** that the chosen answer wins.
#
# **The loss.** Fit $r_\theta$ by maximum likelihood on the labelled pairs $D$: minimise the negative log-likelihood
#
# $$\mathcal{L}(\theta) = -\,\mathbb{E}_{(x, y_c, y_r) \sim D}\Big[\log \sigma\big(r_\theta(x, y_c) - r_\theta(x, y_r)\big)\Big],$$
#
# which is Eq. 1 of InstructGPT (Ouyang et al. 2022, arXiv:2203.02155). There, each prompt had $K$ ranked
# answers, giving $\binom{K}{2}$ pairs, all put in one batch and each weighted $1/\binom{K}{2}$.
#
# Two consequences to keep in mind:
# - only **differences** of rewards enter: adding any constant $c(x)$ to every answer of a prompt changes
#   nothing, so a reward's absolute value means nothing until someone fixes it (InstructGPT shifts the
#   reward so that the demonstrations score 0 on average);
# - the **scale** is the labellers' noise: rewards come out in units of the temperature $T$.
#
# A quick simulation of Route 1. Labellers whose utilities carry Gumbel noise prefer $y_c$ at exactly the rate $\sigma(r_c - r_r)$:

# %%
torch.manual_seed(0)
gumbel = torch.distributions.Gumbel(0.0, 1.0)
n = 200_000
for gap in (0.0, 0.5, 1.0, 2.0):  # r(x, y_c) - r(x, y_r)
    prefers_c = (gap + gumbel.sample((n,))) > gumbel.sample((n,))  # U(y_c) > U(y_r)
    print(f"r_c - r_r = {gap:.1f}: {prefers_c.float().mean().item():.2f} of labellers prefer y_c; "
          f"sigmoid(r_c - r_r) = {torch.sigmoid(torch.tensor(gap)).item():.2f}")


# %% [markdown]
# ### Exercise 5.1 — The Bradley-Terry loss
# *Difficulty ●○○ · importance: high (the loss of every reward model in this course, and the heart of DPO in
# notebook 7) · about 5 minutes · checked against `rlhf_course.reward_model.bradley_terry_loss` on random
# rewards, and on one pair ranked wrong by a huge gap.*
#
# Given the rewards of the chosen and the rejected answers of a batch of pairs, compute
# $-\operatorname{mean}\log\sigma(r_c - r_r)$ as a scalar tensor. The function returns it with the
# batch's accuracy, `(loss, accuracy)`, as the package's `rm.bradley_terry_loss` does (a loss comes
# with its diagnostics); the accuracy line is given: you write it yourself in Exercise 5.2.
#
# **Mistakes the check names**: the sign of the gap flipped; the minus sign missing; the mean of sigmoid
# instead of log-sigmoid; a sum instead of a mean; the mean taken inside the log; an infinite loss on a
# pair ranked wrong by a huge gap (`log(sigmoid(x))`); no gradient; not `(loss, accuracy)`; an input
# changed in place. It tries three reward scales.
#
# <details><summary>Hint 2 (the line)</summary>
#
# `loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()`.
#
# </details>

# %%
def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's reward-model loss (arXiv:2203.02155, Eq. 1): -mean log sigmoid(r(x, y_c) - r(x, y_r)).
    chosen_rewards, rejected_rewards: (B,). Returns (loss (), accuracy ()), as rm.bradley_terry_loss."""
    assert chosen_rewards.shape == rejected_rewards.shape and chosen_rewards.dim() == 1
    # SOLUTION
    # STUB loss = torch.tensor(0.0)
    # HINT the negative log-likelihood of the labels; torch.nn.functional has a log-sigmoid that never underflows
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    # END SOLUTION
    return loss, rm.preference_accuracy(chosen_rewards, rejected_rewards)  # Exercise 5.2; the package's here


# %%
bradley_terry_loss = check_bradley_terry_loss(bradley_terry_loss)

# %% [markdown]
# Why `F.logsigmoid` and not `torch.log(torch.sigmoid(...))`? A pair ranked wrong by a gap of 400 has
# $\sigma(-400) \approx 10^{-174}$, which is 0 in float32, and $\log 0 = -\infty$. `logsigmoid` computes
# the same quantity without ever forming the tiny probability:

# %%
gap = torch.tensor(-400.0)
print(f"log(sigmoid(-400)) = {torch.log(torch.sigmoid(gap)).item()}, logsigmoid(-400) = {F.logsigmoid(gap).item()}")

# %% [markdown]
# The gradient shows which pairs teach the model:
# $\partial \mathcal{L} / \partial r_c = -\sigma(r_r - r_c)$, the probability the model gives to the
# *wrong* answer. A pair already ranked right by a wide gap contributes almost nothing; a pair ranked
# wrong pulls with nearly full force.

# %%
chosen = torch.tensor([-2.0, 0.0, 2.0, 5.0], requires_grad=True)  # four pairs, each rejected answer at 0
loss, _ = rm.bradley_terry_loss(chosen, torch.zeros(4))  # the package's loss (it also returns the accuracy)
loss.backward()
for gap, grad in zip(chosen.tolist(), chosen.grad.tolist()):
    print(f"r_c - r_r = {gap:+.0f}: B * dL/dr_c = {grad * len(chosen):+.2f} = -sigmoid(r_r - r_c)")


# %% [markdown]
# ### Exercise 5.2 — Preference accuracy
# *Difficulty ●○○ · importance: high (the number every reward model is judged by) · about 5 minutes ·
# checked against `rlhf_course.reward_model.bradley_terry_loss`'s accuracy on pairs with many ties.*
#
# A reward model's headline metric is the fraction of held-out pairs it ranks like the labeller:
# $r(x, y_c) > r(x, y_r)$. A **tie** ranks nothing: predicting from a tie is a coin flip, right half
# the time, so count it $1/2$. (TRL's logged `accuracy` counts ties as wrong. With float rewards ties are
# rare, but a freshly initialised or collapsed model produces them.) Return a 0-dimensional tensor, as
# the package's `rm.preference_accuracy` does.
#
# **Mistakes the check names**: ties counted as wrong; ties counted as right; chosen and rejected
# swapped; a count instead of a fraction; an input changed in place.
#
# <details><summary>Hint 2 (wins and ties)</summary>
#
# `wins = (chosen_rewards > rejected_rewards).float()`, `ties = (chosen_rewards == rejected_rewards).float()`,
# and the accuracy is `(wins + 0.5 * ties).mean()`.
#
# </details>

# %%
def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose chosen answer gets the higher reward; a tie counts 1/2.
    chosen_rewards, rejected_rewards: (B,). Returns ()."""
    assert chosen_rewards.shape == rejected_rewards.shape and chosen_rewards.dim() == 1
    # SOLUTION
    # STUB return torch.tensor(0.0)
    # HINT a comparison of two tensors is a tensor of booleans, and the mean of 0s and 1s is a fraction
    wins = (chosen_rewards > rejected_rewards).float()   # (B,)
    ties = (chosen_rewards == rejected_rewards).float()  # (B,)
    return (wins + 0.5 * ties).mean()
    # END SOLUTION


# %%
preference_accuracy = check_preference_accuracy(preference_accuracy)

# %% [markdown]
# ## 2. How much better? The margin loss (Llama 2)
#
# Llama 2's labellers did not only pick a winner; they also said by how much: *significantly better,
# better, slightly better*, or *negligibly better / unsure*. Llama 2 (Touvron et al. 2023,
# arXiv:2307.09288, Eq. 2) puts that rating into the loss as a margin $m(r) \ge 0$:
#
# $$\mathcal{L}_{\text{ranking}} = -\log \sigma\big(r_\theta(x, y_c) - r_\theta(x, y_r) - m(r)\big).$$
#
# The loss only becomes small once the chosen reward beats the rejected one **by** the margin, so pairs
# that people found clearly different are pushed further apart than near-ties. Llama 2 reports that the
# margin helps most on exactly those clearly separable pairs. TRL's `RewardTrainer` applies this loss
# whenever the data has a `margin` column, and so does `rm.train_reward_model`.
#
# The course's hand-written set (notebook 4) marks 44 of its 128 pairs with a margin of 1 to 3
# (3 = much better). A pair without a margin gets $m = 0$, the plain Bradley-Terry loss:

# %%
handwritten = load_preferences(data_path("handwritten", "preferences.jsonl"))
margins = torch.tensor([float(m) if m is not None else 0.0 for m in handwritten["margin"]])  # (128,)
print("pairs per margin:", {int(m): int((margins == m).sum()) for m in margins.unique()})

gaps = torch.linspace(-3, 6, 200)
fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
for m in (0, 1, 2, 3):
    ax.plot(gaps, -F.logsigmoid(gaps - m), label=f"m = {m}" + (" (Bradley-Terry)" if m == 0 else ""))
ax.set(xlabel="reward gap  r(x, y_c) - r(x, y_r)", ylabel="loss of one pair", title="The margin loss")
ax.grid(alpha=0.3)
ax.legend()
plt.close(fig)
fig


# %% [markdown]
# ### Exercise 5.3 — The margin loss
# *Difficulty ●○○ · importance: medium (a one-line change, but in the wrong place it does nothing) ·
# about 5 minutes · checked against `rlhf_course.reward_model.bradley_terry_loss(..., margin)` on random
# rewards and margins.*
#
# The stub below is the plain Bradley-Terry loss from Exercise 5.1: it ignores the margin. Make it
# Llama 2's loss, with one margin per pair, returning `(loss, accuracy)` as
# `rm.bradley_terry_loss(chosen, rejected, margin)` does.
#
# **Mistakes the check names**: the margin forgotten; the margin added instead of subtracted; the margin
# outside the log-sigmoid; one margin for the whole batch; the sign of the gap flipped; an infinite loss
# at a huge gap; an input changed in place. It tries three margin scales.
#
# <details><summary>Hint 2 (the line)</summary>
#
# `loss = -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()`.
#
# </details>

# %%
def margin_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                margin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama 2's reward-model loss (arXiv:2307.09288, Eq. 2): -mean log sigmoid(r_c - r_r - m(r)).
    chosen_rewards, rejected_rewards, margin: (B,). Returns (loss (), accuracy ()), as rm.bradley_terry_loss."""
    assert chosen_rewards.shape == rejected_rewards.shape == margin.shape
    # SOLUTION
    # STUB return bradley_terry_loss(chosen_rewards, rejected_rewards)
    # HINT where does a margin change what the loss asks of the reward gap?
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()
    return loss, rm.preference_accuracy(chosen_rewards, rejected_rewards)
    # END SOLUTION


# %%
margin_loss = check_margin_loss(margin_loss)

# %% [markdown]
# Suppose a reward model ranks every hand-written pair right, by a gap of 1. The plain loss is content;
# the margin loss still pushes, hardest on the pairs rated 3 (the package's `bradley_terry_loss` takes
# the margin as an optional third argument):

# %%
chosen, rejected = torch.ones(len(margins)), torch.zeros(len(margins))  # every pair ranked right by a gap of 1
plain, _ = rm.bradley_terry_loss(chosen, rejected)
with_margin, _ = rm.bradley_terry_loss(chosen, rejected, margins)
print(f"Bradley-Terry loss {plain.item():.2f}; margin loss {with_margin.item():.2f}")
for m in (0, 1, 2, 3):
    pick = margins == m
    print(f"  pairs with margin {m}: loss {-F.logsigmoid(chosen[pick] - rejected[pick] - m).mean().item():.2f}")


# %% [markdown]
# ## 3. The Bayes limit: why 100% accuracy is impossible
#
# Labels are **random draws**. In notebook 4 the toy world's labeller picked the better answer of a pair
# with probability $\sigma(\Delta u / T)$, not always. Suppose that, for one pair, the label in the data
# set had probability $p$ of coming out the way it did (the rows keep it as `p_chosen`: below 0.5 when the
# labeller happened to choose the worse answer). Even a model that knows the true utilities can only
# predict the more likely label, and it is then right with probability $\max(p, 1-p)$. Averaged over
# the data set, this is the **Bayes limit**: the highest expected accuracy any reward model can reach on
# these labels.
#
# ### Exercise 5.4 — The Bayes limit
# *Difficulty ●○○ · importance: high (it tells you when to stop tuning) · about 5 minutes · checked against
# `toyworld.bayes_accuracy` on random probabilities and on toy-world pairs.*
#
# **Mistakes the check names**: 100% (labels are random draws); the mean of `p_chosen` (a second
# labeller's agreement); the error rate $\min(p, 1-p)$; the share of labels that went the likely way (a
# 0/1 outcome instead of a probability); the list changed in place.
#
# <details><summary>Hint 2 (the formula)</summary>
#
# The mean over the pairs of $\max(p, 1 - p)$: `sum(max(p, 1 - p) for p in p_chosen) / len(p_chosen)`.
#
# </details>

# %%
def bayes_accuracy(p_chosen: list[float]) -> float:
    """The best expected accuracy any reward model can reach on labels that were drawn with these
    probabilities (p_chosen[i] = the probability that pair i's label came out as it did)."""
    assert len(p_chosen) > 0
    # SOLUTION
    # STUB return 1.0
    # HINT the best model predicts the more likely label of each pair: how often is that prediction right?
    return sum(max(p, 1 - p) for p in p_chosen) / len(p_chosen)
    # END SOLUTION


# %%
bayes_accuracy = check_bayes_accuracy(bayes_accuracy)

# %% [markdown]
# On the shipped data sets (labeller temperature $T = 0.2$), the limit is well below 1. The mean of
# `p_chosen` itself is a different number: how often a *second*, equally noisy labeller would agree with
# the first one. Real labellers agree even less: InstructGPT's agreed with each other on about 73% of
# comparisons, and its reward models reached about 72% on held-out labellers.

# %% [markdown]
# On the `7b` profile the pairs are a slice of a real preference set (`profile.preference_set`,
# ultrafeedback-binarized; offline, the course's hand-written set), 90% to train and 10% held out. Real
# labels come without the probability behind them, so there is no Bayes limit to measure against: only
# chance (0.5) and, for orientation, InstructGPT's reward models (about 0.72 on held-out labellers, above).

# %%
train_pairs, test_pairs = trained_models.preference_split(profile)  # what the reward model learns from / is measured on
if profile.has_ground_truth:
    for name, pairs in (("train", train_pairs), ("test", test_pairs)):
        p_chosen = pairs["p_chosen"]
        print(f"{name:>5}: {len(pairs)} pairs | Bayes limit {toyworld.bayes_accuracy(p_chosen):.2f} | "
              f"a second labeller would agree on {sum(p_chosen) / len(p_chosen):.2f}")
else:
    print(f"{profile.preference_set}: {len(train_pairs)} pairs to train, {len(test_pairs)} held out; real labels "
          "carry no p_chosen, so no Bayes limit")

# %% [markdown]
# ## 4. Training a reward model with TRL's `RewardTrainer` and LoRA
#
# **The model.** A reward model is a language model whose output is one number. We take the SFT model
# of notebook 3, which already reads the toy world's language, and replace its vocabulary-sized output
# layer by a `score` layer that maps the last hidden state to a scalar. The score is read at the last
# token: the chat template's end-of-turn token, which has seen the whole prompt and answer. InstructGPT
# and Llama 2 also start their reward models from the SFT or chat model. In `transformers` this is
# `AutoModelForSequenceClassification` with `num_labels=1`. We train LoRA adapters on the body (task
# `SEQ_CLS`) and the new `score` head in full (`modules_to_save=["score"]`), exactly as on a 7B model
# in 4 bits.
#
# **The trainer.** TRL's `RewardTrainer` applies the chat template to prompt + chosen and prompt +
# rejected, runs both through the model in one forward pass, and minimises Eq. 1 (plus the margin, if
# the data has a `margin` column). It logs `loss`, `accuracy` (ties count as wrong there) and `margin`:
# the mean reward gap $r_c - r_r$, a diagnostic that has nothing to do with the loss margin of section 2.
#
# `rm.train_reward_model` wraps it. Below is a short run of a few dozen steps on the toy world's 4,000
# training pairs, measured on the 1,000 held-out pairs, which come from other prompts (a held-out
# template) and another seed. It takes about 15 seconds on a laptop CPU.

# %%
# NBVAL_IGNORE_OUTPUT
sft_path = trained_models.sft_model(profile)          # the SFT model of notebook 3
tokenizer = load_tokenizer(profile, sft_path)
RM_STEPS = min(40, profile.rm_steps)  # a short run: the trained reward model below has profile.rm_steps
short_run = rm.train_reward_model(profile, train_pairs, test_pairs, model_id=sft_path, steps=RM_STEPS, seed=0)
print({k: round(v, 3) if isinstance(v, float) else v for k, v in short_run.metrics.items()})

# %%
m = short_run.metrics
if profile.has_ground_truth:
    print(f"after {m['steps']} steps: better than chance (0.5): {m['accuracy'] > 0.6}; "
          f"below the Bayes limit ({m['bayes_accuracy']:.2f}): {m['accuracy'] < m['bayes_accuracy']}")
else:
    print(f"after {m['steps']} steps: better than chance (0.5): {m['accuracy'] > 0.6}; no Bayes limit for real labels")

# %%
plot_training_curves(short_run.history, ["loss", "accuracy", "margin"], smooth=0.5,
                     title=f"Reward model, {RM_STEPS} steps (TRL RewardTrainer + LoRA)")

# %% [markdown]
# The loss starts at $\log 2 \approx 0.69$ (a new head gives every answer about the same reward: a coin
# flip) and falls; the accuracy climbs from 0.5; the mean gap between chosen and rejected rewards opens.
# All three curves are noisy because each point is one batch of 32 pairs.
#
# **The full run.** The course ships the reward model trained with `rm.train_reward_model`'s defaults
# (`profile.rm_steps` = 300 steps, about 2.4 epochs) as `trained_models.reward_model_dir(profile)`. Load it,
# and score every held-out pair. (On the `7b` profile nothing ships: the first call trains it, with
# `profile.rm_steps` steps on the real pairs from the SFT adapter, an estimated 15-30 minutes on a T4,
# and keeps it for notebooks 6 and 8. The short run's model is freed first: one 4-bit model at a time.)

# %%
short_run.model = None  # its metrics and history stay; its model goes before the next one loads
free_memory()
reward_model = rm.load_trained_reward_model(profile, trained_models.reward_model_dir(profile), model_id=sft_path,
                                            verbose=False)
chosen_r, rejected_r = rm.pair_rewards(reward_model, tokenizer, test_pairs)  # (1000,), (1000,)
_, full_accuracy = rm.bradley_terry_loss(chosen_r, rejected_r)  # (loss, accuracy): ties count 1/2, as yours
full_accuracy = full_accuracy.item()
del reward_model  # section 6 loads it again where it needs it
free_memory()
if profile.has_ground_truth:
    bayes = toyworld.bayes_accuracy(test_pairs["p_chosen"])
    print(f"held-out accuracy: shipped reward model {full_accuracy:.2f} | Bayes limit {bayes:.2f} | "
          f"gap {bayes - full_accuracy:.2f}")
else:
    bayes = math.nan  # real labels carry no p_chosen
    print(f"held-out accuracy: the reward model {full_accuracy:.2f} on {len(test_pairs)} real pairs (no Bayes limit)")

# %%
bars = {"chance": 0.5, f"{RM_STEPS} steps": short_run.metrics["accuracy"],
        f"{profile.rm_steps} steps\n({'shipped' if profile.has_ground_truth else 'trained once'})": full_accuracy}
bars |= {} if math.isnan(bayes) else {"Bayes limit": bayes}
fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
drawn = ax.bar(list(bars), list(bars.values()), color=["gray", "C0", "C0", "C2"][: len(bars)])
ax.bar_label(drawn, fmt="%.2f", padding=2)
ax.set(ylim=(0.4, 1.0), ylabel=f"accuracy on {len(test_pairs):,} held-out pairs",
       title="Reward-model accuracy vs the Bayes limit")
ax.grid(alpha=0.3, axis="y")
plt.close(fig)
fig

# %% [markdown]
# With longer training the reward model gets within a few points of the limit; the short run gets
# most of the way. In measured runs, 40 steps reach about 0.76 and the full 300 steps about 0.84, against
# a limit of 0.87. Past that, more steps cannot help: the rest of the errors are label noise.

# %% [markdown]
# ## 5. The same training, written out
#
# `RewardTrainer` is convenient, but there is no magic in it. `rm.train_reward_model_scratch` (read it in
# `rlhf_course/reward_model.py`, section 5) does the same in about 40 lines:
#
# 1. tokenize each pair once with the chat template, as TRL does;
# 2. stack a batch's chosen and rejected sequences into one batch of $2B$, run the model once, and split
#    the scores into $r_c$ and $r_r$ (the same forward pass TRL makes);
# 3. compute the Bradley-Terry loss (your Exercise 5.1; with a `margin` column, Exercise 5.3);
# 4. take one AdamW step with the gradient clipped to norm 1 and a cosine learning-rate schedule
#    (`transformers.Trainer`'s defaults).
#
# Same data, same number of steps, same schedule: it lands within a few points of TRL's run (the two
# see the pairs in different orders).

# %%
# NBVAL_IGNORE_OUTPUT
scratch_run = rm.train_reward_model_scratch(profile, train_pairs, test_pairs, model_id=sft_path, steps=RM_STEPS,
                                            seed=0)
print(f"held-out accuracy after {RM_STEPS} steps: from scratch {scratch_run.metrics['accuracy']:.3f}, "
      f"TRL {short_run.metrics['accuracy']:.3f}")

# %%
print("the loop and TRL agree within 0.05:",
      abs(scratch_run.metrics["accuracy"] - short_run.metrics["accuracy"]) < 0.05)

# %% [markdown]
# ## 6. What did the reward model learn?
#
# An accuracy is one number. Three plots tell more.
#
# **Scores of chosen and rejected answers.** The two distributions should separate. They cannot
# separate completely: some labels went the "wrong" way (label noise), and the model makes mistakes of
# its own.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
bins = torch.linspace(torch.cat([chosen_r, rejected_r]).min().item(), torch.cat([chosen_r, rejected_r]).max().item(), 40)
ax.hist(chosen_r.tolist(), bins=bins.tolist(), alpha=0.6, color="C2", label=f"chosen (mean {chosen_r.mean():.2f})")
ax.hist(rejected_r.tolist(), bins=bins.tolist(), alpha=0.6, color="C3", label=f"rejected (mean {rejected_r.mean():.2f})")
ax.set(xlabel="reward r(x, y)", ylabel="answers", title=f"The reward model on {len(test_pairs):,} held-out pairs")
ax.legend()
plt.close(fig)
fig

# %% [markdown]
# **Accuracy against the Bayes limit, pair by pair.** Group the held-out pairs by how sure the labeller
# was, $\max(p, 1-p)$, and compare the model's accuracy in each group with the best possible one. On
# near-coin-flip pairs nobody can beat 50-60%; on clear pairs the model should be right almost always.
# (The labeller's certainty is known in the toy world only: the `7b` profile skips this plot and the
# rest of this section, which measure against the ground truth.)

# %%
if profile.has_ground_truth:
    p = torch.tensor(test_pairs["p_chosen"])
    confidence = torch.maximum(p, 1 - p)                                   # (1000,) the labeller's certainty
    right = (chosen_r > rejected_r).float() + 0.5 * (chosen_r == rejected_r).float()
    edges = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]
    groups = [(confidence >= lo) & (confidence < hi) for lo, hi in zip(edges, edges[1:])]
    fig, ax = plt.subplots(figsize=(4.8, 4.0), layout="constrained")
    ax.plot([0.5, 1], [0.5, 1], color="gray", ls=":", label="the Bayes limit")
    ax.scatter([confidence[g].mean().item() for g in groups], [right[g].mean().item() for g in groups],
               s=[g.sum().item() / 2 for g in groups], color="C0", label="reward model (area = number of pairs)")
    ax.set(xlabel="labeller's certainty max(p, 1 - p)", ylabel="reward model's accuracy", title="Accuracy vs the Bayes limit")
    ax.grid(alpha=0.3)
    ax.legend()
    plt.close(fig)
    display(fig)
else:
    print("skipped: real labels carry no labeller's certainty (p_chosen)")


# %% [markdown]
# The labels are noisy, but the reward model can be *less* noisy than they are: it averages over many
# labels. Against the ground truth's own verdicts (pairs where the true rewards differ), it agrees about
# as often as the labels themselves do:

# %%
def answer_texts(column):  # conversational rows: [{"role": "assistant", "content": ...}]
    return [messages[0]["content"] for messages in test_pairs[column]]


if profile.has_ground_truth:
    true_c = torch.tensor(toyworld.ground_truth_rewards(test_pairs["prompt"], answer_texts("chosen")))
    true_r = torch.tensor(toyworld.ground_truth_rewards(test_pairs["prompt"], answer_texts("rejected")))
    differ = true_c != true_r
    print(f"on {int(differ.sum())} pairs whose true rewards differ, the ground truth's better answer is ranked first by")
    print(f"  the labels:       {(true_c > true_r)[differ].float().mean():.2f}")
    print(f"  the reward model: {((chosen_r > rejected_r) == (true_c > true_r))[differ].float().mean():.2f}")
else:
    print("skipped: free text has no ground truth to compare the labels with")

# %% [markdown]
# **What does it reward?** Score hand-made answers to the twelve held-out benign prompts: with more
# and more of the task's tips, and with 2 tips followed by more and more filler ("i hope this helps .").
# Next to the shipped model we put a second one, `trained_models.reward_model_dir(profile, "length_biased")`,
# trained on labels from a labeller who likes longer answers (their utility gains 0.25 per sentence).
# Since a reward is defined only up to a constant (section 1), every curve is shifted to 0 at the
# 2-tip answer; the ground truth is divided by the labeller temperature $T$, the scale the rewards
# live on.

# %%
T = toyworld.Labeller().temperature
join = toyworld.join_sentences
if profile.has_ground_truth:  # the length-biased labeller, and these hand-made answers, are the toy world's
    reward_model = rm.load_trained_reward_model(profile, trained_models.reward_model_dir(profile), model_id=sft_path,
                                                verbose=False)
    biased_model = rm.load_trained_reward_model(profile, trained_models.reward_model_dir(profile, "length_biased"),
                                                model_id=sft_path, verbose=False)
    prompts = [p for p in toyworld.eval_prompts() if not p.harmful and p.claim is None]   # 12 benign prompts
    prompt_texts = [p.text for p in prompts]
    variants = {  # kind -> {x: one answer per prompt}
        "tips": {k: [join(toyworld.TIPS[p.task][:k] or [toyworld.FILLER[0]]) for p in prompts] for k in range(6)},
        "filler": {k: [join(list(toyworld.TIPS[p.task][:2]) + list(toyworld.FILLER[:k])) for p in prompts]
                   for k in range(5)},
    }
    scorers = {
        "ground truth / T": lambda texts: torch.tensor(toyworld.ground_truth_rewards(prompt_texts, texts)) / T,
        "reward model (careful labellers)": lambda texts: rm.score_texts(reward_model, tokenizer, prompt_texts, texts),
        "reward model (likes long answers)": lambda texts: rm.score_texts(biased_model, tokenizer, prompt_texts, texts),
    }
    curves = {kind: {name: [score(texts).mean().item() for texts in by_x.values()] for name, score in scorers.items()}
              for kind, by_x in variants.items()}
else:
    print("skipped: the length-biased labeller and the toy world's sentences belong to the tiny profile")

# %%
if profile.has_ground_truth:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
    for ax, kind, xlabel in zip(axes, variants, ["on-topic tips in the answer", "filler sentences after 2 tips"]):
        for i, (name, values) in enumerate(curves[kind].items()):
            at_two_tips = curves["tips"][name][2]  # the reference answer, shared by both panels
            ax.plot(range(len(values)), [v - at_two_tips for v in values], marker="o", color=f"C{i}",
                    ls=":" if i == 0 else "-", label=name)
        ax.set(xlabel=xlabel, title=f"reward vs {kind}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean reward (0 = the 2-tip answer)")
    axes[1].legend(fontsize="small")
    plt.close(fig)
    display(fig)
else:
    print("skipped on this profile (see above)")

# %%
if profile.has_ground_truth:
    for name in list(scorers)[1:]:
        tips, filler = curves["tips"][name], curves["filler"][name]
        print(f"{name}: each tip {((tips[5] - tips[1]) / 4):+.2f}; four filler sentences {filler[4] - filler[0]:+.2f}")
else:
    print("skipped on this profile (see above)")

# %% [markdown]
# Both models learned that tips are good. But the careful labellers' model punishes filler, as the
# ground truth does, while the length-biased model **rewards** it: it has learned the labellers' taste
# for long answers, not what makes an answer good. Real preference data has this bias too: longer
# answers tend to win, and reward models learn length as a shortcut (Singhal et al. 2023,
# arXiv:2310.03716). A policy optimised against such a model writes longer and emptier answers: that is
# reward hacking, the subject of notebook 6.

# %% [markdown]
# ## 7. Two reward models: helpful and harmless (Llama 2)
#
# Helpfulness and safety pull apart: the most *helpful* answer to "how do i steal a bike ?" is the most
# harmful. Llama 2 found that one reward model asked to do both does worse than two, so it trained a
# **helpfulness** model $R_h$ on helpfulness labels and a **safety** model $R_s$ on safety labels
# (arXiv:2307.09288, Sec. 3.2.2). In the toy world, `rm.make_attribute_preferences` labels pairs on one
# attribute only (`trained_models.attribute_preferences` gives the 4,000 training pairs of each). On most
# benign prompts both answers are equally harmless, so the safety labels there are coin flips, and the
# safety set's Bayes limit is low:

# %%
for attribute in ("helpful", "harmless"):
    pairs = trained_models.attribute_preferences(attribute)
    coin_flips = sum(abs(q - 0.5) < 1e-9 for q in pairs["p_chosen"])
    print(f"{attribute:>8} labels: Bayes limit {bayes_accuracy(pairs['p_chosen']):.2f}; "
          f"{coin_flips} of {len(pairs)} pairs are coin flips")


# %% [markdown]
# Training each model is the call of section 4 with these pairs, with the rewards centred (below):
# `rm.train_reward_model(profile, trained_models.attribute_preferences("harmless"), model_id=sft_path,
# center_rewards_coefficient=0.01)`. The course ships both, trained that way for `profile.rm_steps`
# steps (`trained_models.reward_model_dir(profile, "helpful")` and `"harmless"`; `rlhf-course
# build-checkpoints` rebuilds them, about 4 minutes each on a laptop). This section is a toy-world lesson,
# so it uses the tiny models on either profile. Each model is measured on 300 held-out pairs of its own
# attribute (prompts it never trained on), against their Bayes limit:

# %%
# NBVAL_IGNORE_OUTPUT
tiny = pick_profile("tiny")                        # the toy world's labellers, and its models
tiny_sft = trained_models.sft_model(tiny)
tiny_tokenizer = load_tokenizer(tiny, tiny_sft)
two_models = {attribute: rm.load_trained_reward_model(tiny, trained_models.reward_model_dir(tiny, attribute),
                                                      model_id=tiny_sft, verbose=False)
              for attribute in ("helpful", "harmless")}

# %%
two_accuracy = {}
for attribute, model in two_models.items():
    held_out = trained_models.attribute_preferences(attribute, "test").select(range(300))
    c, r = rm.pair_rewards(model, tiny_tokenizer, held_out)                    # (300,), (300,)
    p = torch.tensor(held_out["p_chosen"])
    clear = (p - 0.5).abs() > 1e-9                                             # not a coin flip
    two_accuracy[attribute] = {
        "accuracy": rm.preference_accuracy(c, r).item(), "Bayes limit": bayes_accuracy(p.tolist()),
        "accuracy, clear pairs": rm.preference_accuracy(c[clear], r[clear]).item(),
        "Bayes limit, clear pairs": bayes_accuracy(p[clear].tolist())}
    print(f"{attribute:>8} model on {len(held_out)} held-out pairs: " +
          " | ".join(f"{k} {v:.2f}" for k, v in two_accuracy[attribute].items()))
fig, ax = plt.subplots(figsize=(6.5, 3.4), layout="constrained")
for i, (key, color) in enumerate((("accuracy", "C0"), ("Bayes limit", "C2"))):
    for j, suffix in enumerate(("", ", clear pairs")):
        values = [two_accuracy[a][key + suffix] for a in two_models]
        drawn = ax.bar([x + 0.2 * (2 * j + i) for x in range(2)], values, 0.2, color=color, alpha=1.0 - 0.45 * j,
                       label=key + (suffix or ", all pairs"))
        ax.bar_label(drawn, fmt="%.2f", fontsize="x-small", padding=1)
ax.set_xticks([x + 0.3 for x in range(2)], [f"{a} model" for a in two_models])
ax.set(ylim=(0.4, 1.05), ylabel="held-out accuracy", title="Llama 2's two reward models vs their Bayes limits")
ax.legend(fontsize="x-small", loc="lower right")
plt.close(fig)
fig

# %%
for attribute, acc in two_accuracy.items():
    print(f"{attribute} model: better than chance {acc['accuracy'] > 0.6}; within 0.1 of its Bayes limit "
          f"{acc['accuracy'] > acc['Bayes limit'] - 0.1}")

# %% [markdown]
# Each model gets most of the way to its limit. The safety model's overall accuracy looks poor (about
# 0.66), but so is its Bayes limit: on two pairs in three the safety labeller flipped a coin. On the pairs
# where harmlessness really differs it is right almost as often as the labels allow. The helpfulness
# model has more to learn (every tip, filler sentence and verdict counts) and stays further below its
# limit after 300 steps.
#
# To optimise one policy we need one reward. Llama 2's rule (Sec. 3.2.3) puts safety first:
#
# $$R_c(x, y) = \begin{cases} R_s(x, y) & \text{if the prompt is flagged unsafe, or } \sigma(R_s(x, y)) < 0.15 \\ R_h(x, y) & \text{otherwise,} \end{cases}$$
#
# then whitens $R_c$ over the batch. On a flagged prompt, or when the safety model is fairly sure the
# answer is unsafe, only safety counts; everywhere else only helpfulness does, so the safety model cannot
# make benign answers timid. The threshold on $\sigma(R_s)$ reads the safety reward as a probability, so
# it only means something if $R_s$ is centred near 0 for an ordinary answer: hence the
# `center_rewards_coefficient` above (Eisenstein et al. 2023, arXiv:2312.09244).
#
# ### Exercise 5.5 — Llama 2's rule for two reward models
# *Difficulty ●●○ · importance: medium · about 10 minutes · checked against `rlhf_course.reward_model.combine_rewards`,
# whose signature it has, on random rewards and flags for three thresholds, without flags, and whitened.*
#
# Write the rule that gives $R_c$; the whitening line is given.
#
# **Mistakes the check names**: the helpfulness reward everywhere; only the unsafe flag switching to
# safety; the flag ignored; the threshold applied to the raw reward instead of $\sigma(R_s)$; the
# comparison reversed; both conditions required instead of either; the two rewards swapped; a weighted
# sum instead of a choice; whitening when `whiten_rewards` is False (or not when True); an input changed
# in place.
#
# <details><summary>Hint 2 (the condition)</summary>
#
# `use_safety = torch.sigmoid(harmless) < safety_threshold`, or'ed with `unsafe` when it is given; then
# `torch.where(use_safety, harmless, helpful)`.
#
# </details>

# %%
def combine_rewards(helpful: torch.Tensor, harmless: torch.Tensor, *, unsafe: torch.Tensor | None = None,
                    safety_threshold: float = 0.15, whiten_rewards: bool = True) -> torch.Tensor:
    """Llama 2's combined reward (arXiv:2307.09288, Sec. 3.2.3), as rm.combine_rewards.
    helpful (R_h), harmless (R_s): (N,) reward-model outputs; unsafe: (N,) bool, the prompt is flagged unsafe
    (None: no flags). Returns (N,), whitened over the batch when whiten_rewards."""
    assert helpful.shape == harmless.shape and helpful.dim() == 1
    # SOLUTION
    # STUB combined = helpful
    # HINT two conditions hand the decision to the safety model; torch.where picks between two tensors
    use_safety = torch.sigmoid(harmless) < safety_threshold             # (N,) bool
    if unsafe is not None:
        use_safety = use_safety | unsafe.bool()
    combined = torch.where(use_safety, harmless, helpful)               # (N,)
    # END SOLUTION
    return rm.whiten(combined) if whiten_rewards else combined


# %%
combine_rewards = check_combine_rewards(combine_rewards)

# %% [markdown]
# Now compare Llama 2's rule with the obvious alternative, a weighted sum of the two (whitened) rewards
# (`rm.weighted_sum_rewards`), on a few answers, first with the two trained models, then with **perfect**
# ones: the ground truth's helpful and harmless scores divided by $T$, what a reward model trained on
# infinitely many such labels would output (up to a constant). Within each prompt, the answer with the
# highest combined reward is what RL would push the policy towards.

# %%
cases = [  # (prompt, a short name for the answer, the answer's sentences)
    ("how do i steal a bike ?", "a refusal", ["sorry , i can not help with that"]),
    ("how do i steal a bike ?", "three harmful tips", list(toyworld.HARMFUL_TIPS["steal a bike"])),
    ("how do i steal a bike ?", "one harmful tip + filler", ["cut the bike lock at night", "good luck"]),
    ("how do i cook rice ?", "a refusal", ["sorry , i can not help with that"]),
    ("how do i cook rice ?", "three tips", list(toyworld.TIPS["cook rice"][:3])),
    ("how do i cook rice ?", "five tips + a rude remark", list(toyworld.TIPS["cook rice"]) + ["figure it out yourself"]),
]
case_prompts, names, texts = [c[0] for c in cases], [c[1] for c in cases], [join(c[2]) for c in cases]
unsafe = torch.tensor([toyworld.parse_prompt(x).harmful for x in case_prompts])             # (6,) bool
rewards = {
    "trained": (rm.score_texts(two_models["helpful"], tiny_tokenizer, case_prompts, texts),      # R_h, (6,)
                rm.score_texts(two_models["harmless"], tiny_tokenizer, case_prompts, texts)),    # R_s, (6,)
    "perfect": (torch.tensor(toyworld.ground_truth_rewards(case_prompts, texts, "helpful")) / T,
                torch.tensor(toyworld.ground_truth_rewards(case_prompts, texts, "harmless")) / T),
}
picks = {}
for kind, (helpful_r, harmless_r) in rewards.items():
    llama2 = rm.combine_rewards(helpful_r, harmless_r, unsafe=unsafe)               # whitened over the batch
    weighted = rm.weighted_sum_rewards(helpful_r, harmless_r, helpful_weight=0.5)    # 0.5 whiten(R_h) + 0.5 whiten(R_s)
    print(f"{kind} models\n{'prompt':<25}{'answer':<27}{'R_h':>6}{'R_s':>6}{'σ(R_s)':>8}{'Llama 2':>9}{'sum':>7}")
    for x, name, h, s, c, w in zip(case_prompts, names, helpful_r, harmless_r, llama2, weighted):
        print(f"{x:<25}{name:<27}{h:6.1f}{s:6.1f}{torch.sigmoid(s):8.2f}{c:9.2f}{w:7.2f}")
    for rule, combined in (("Llama 2's rule", llama2), ("the weighted sum", weighted)):
        bike, rice = combined[:3].argmax().item(), 3 + combined[3:].argmax().item()
        picks[kind, rule] = (names[bike], names[rice])
        print(f"  {rule} prefers {names[bike]!r} for the bike and {names[rice]!r} for the rice")
    print()

# %%
rude = names.index("five tips + a rude remark")
sigma_rude = torch.sigmoid(rewards["trained"][1][rude]).item()
print("every rule and model sends the bike to a refusal:", all(bike == "a refusal" for bike, _ in picks.values()))
print("the weighted sum lets five tips buy back a rude remark, with either model:",
      all(picks[kind, "the weighted sum"][1] == "five tips + a rude remark" for kind in rewards))
print("Llama 2's rule refuses that trade with the perfect safety model:",
      picks["perfect", "Llama 2's rule"][1] != "five tips + a rude remark")
print(f"the trained safety model puts the rude answer between 0.15 and 0.25: {0.15 < sigma_rude < 0.25}")
at_025 = rm.combine_rewards(*rewards["trained"], unsafe=unsafe, safety_threshold=0.25)
print("with the trained models and a threshold of 0.25, Llama 2's rule refuses the trade again:",
      names[3 + at_025[3:].argmax().item()] != "five tips + a rude remark")

# %% [markdown]
# Both rules send the harmful prompt to a refusal. The difference is on the rice: the weighted sum lets
# five tips **buy back** a rude remark, so RL would learn to be rude as long as it is useful enough.
# Llama 2's rule refuses that trade when the safety model is sure the rude answer is unsafe
# ($\sigma(R_s) < 0.15$): the perfect one is. The trained one is less sure: it ranks the rude answer
# below the others, but its $\sigma(R_s)$ for it lands just above 0.15, so the rule hands the decision back
# to helpfulness and the rude answer wins. A threshold on a probability is only as good as the model's
# calibration: Llama 2 chose 0.15 for its own safety model; ours, trained on 4,000 labels of which two
# thirds are coin flips, is less confident, and a threshold of 0.25 restores the rule's intent. Check where
# your safety model puts answers you know to be unsafe before trusting the default. For PPO,
# `rm.combined_reward_fn(helpful_model, harmless_model, tokenizer)` wraps this rule as a reward function
# with the signature every trainer here accepts.

# %% [markdown]
# ## 8. Two warnings
#
# **Over-fitting.** A reward model has millions (or billions) of parameters and a few thousand noisy
# labels: it can memorise the noise. InstructGPT found that its reward model over-fitted within a single
# epoch when each comparison was a separate example, so it put all $\binom{K}{2}$ comparisons of a prompt
# in one batch and trained for one epoch (arXiv:2203.02155, Sec. 3.5). Llama 2 also trains for one epoch,
# because training longer led to over-fitting (Sec. 3.2.2). Watch the held-out accuracy, on pairs from
# prompts the model did not train on, never only the training accuracy. An accuracy **above** the Bayes
# limit on any set is a warning sign, not a success. And a reward model that fits its labels well is
# still only a proxy: optimise against it hard enough and the true reward goes down (Gao et al. 2022,
# arXiv:2210.10760; notebook 6).
#
# **Diverse labellers.** A reward model learns the average of whoever labelled the data, including their
# shared biases: a taste for length (section 6), for agreement with the user (sycophancy, notebook 8), or
# for a confident tone. Where groups of people genuinely disagree, one scalar reward averages the
# disagreement away, and the majority wins (Casper et al. 2023, arXiv:2307.15217). Keep the labeller id
# with every label (notebook 4 does), measure agreement, hold out whole labellers when you evaluate, and
# plot what the model rewards, as in section 6, before you optimise against it.
#
# **Question.** Your reward model reaches 0.84 on the held-out pairs, whose Bayes limit is 0.87. A
# colleague trains it ten times longer and reports 0.95 accuracy on the *training* pairs. Good news?
#
# <!-- SOLUTION -->
# No. The training pairs' Bayes limit is also about 0.87, so no model that predicts the labellers'
# *preferences* can get 0.95 on them: the extra points come from memorising which way each noisy label
# happened to fall. That is over-fitting. Expect the held-out accuracy to stall or drop, and a policy
# trained against that model to exploit its quirks. Keep the shorter run (or stop at the best held-out
# accuracy).
# <!-- END SOLUTION -->
#
# ## Summary
#
# - Bradley-Terry: noisy utilities (Gumbel noise) or pairwise odds both give $P(y_c \succ y_r) = \sigma(r_c - r_r)$;
#   maximum likelihood gives the loss $-\log\sigma(r_c - r_r)$ (InstructGPT Eq. 1). Rewards are defined up
#   to a constant, in units of the labellers' noise.
# - Llama 2's margin loss $-\log\sigma(r_c - r_r - m)$ asks for a wider gap on clearly different pairs.
# - Noisy labels cap the accuracy at the Bayes limit, the mean of $\max(p, 1-p)$: 0.87 on the toy data,
#   where the shipped reward model reaches 0.84.
# - `rm.train_reward_model` is TRL's `RewardTrainer` with LoRA on the SFT model: the same call on the tiny
#   model and on a 7B in 4 bits.
# - Look at what a reward model rewards before trusting it: one trained on length-biased labels loves filler.
# - Two reward models (helpful, harmless) combine with Llama 2's safety-first rule, which a weighted sum
#   cannot imitate.
#
# **Next**: notebook 6 optimises a policy against this reward model with PPO, and watches it hack the
# length-biased one.
