# %% [markdown]
# # 8. Beyond PPO and DPO: best-of-N, rejection sampling, GRPO, AI feedback, and honest evaluation
#
# PPO (notebook 6) and DPO (notebook 7) are not the only ways to turn a reward into a better policy. This
# notebook tours the methods that came after, or that were there all along and turned out to be hard to
# beat: **best-of-N** sampling, **rejection-sampling fine-tuning** (Llama 2) and its iterated form **ReST**,
# **GRPO** and **RLOO** (policy gradients without a value model), **AI feedback** (Constitutional AI,
# RLAIF) and **hindsight relabelling** (HIR). Then it asks the question every method must answer: *is the
# new policy actually better?* - and measures it properly: win rates, KL, length, refusals and sycophancy.
#
# **Learning goals**
# - derive the KL of the best-of-N policy, $\log N - (N-1)/N$, and use it to put best-of-N on the same
#   reward-vs-KL plot as trained policies;
# - see reward over-optimisation (Goodhart) in best-of-N: the reward model's score keeps rising with $N$,
#   the ground truth does not;
# - run rejection-sampling fine-tuning and explain how ReST iterates it;
# - implement GRPO's group-relative advantage and RLOO's leave-one-out baseline, and train with GRPO through TRL;
# - explain Constitutional AI / RLAIF and HIR in a few sentences each;
# - evaluate a policy beyond its mean reward: win rate (ties count one half), KL to the reference, length,
#   refusal rates on benign and harmful prompts, and a sycophancy probe;
# - name the failure modes that a single number hides: the alignment tax, an over-fitted reward model,
#   whose preferences the labels encode.
#
# **Prerequisites**: notebook 2 (baselines and advantages), notebook 5 (the reward model), notebook 6
# (PPO, the KL penalty, reward hacking), notebook 7 (DPO). No GPU is needed.
#
# **Estimated time**: 35 minutes to work through. The notebook runs in about 1-2 minutes on a laptop CPU
# (tiny profile). On the `7b` profile (a T4): an estimated 30-60 minutes (512 best-of-N samples, a short
# rejection-sampling and GRPO run), not measured yet; one 4-bit 7B and the judge (2.4 GB) in memory at a
# time (rejection sampling's SFT: 7.6 GiB, `rlhf-course memory --method sft`, plus the judge; estimated).

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import math
import random
import warnings
from statistics import mean

import datasets
import matplotlib.pyplot as plt
import pandas as pd
import torch
from transformers.utils import logging as hf_logging

from rlhf_course import evaluation, feedback, grpo, plots, ppo, toyworld, trained_models
from rlhf_course import best_of_n as bon
from rlhf_course import reward_model as rm
from rlhf_course.checks.nb08_beyond import (check_best_of_n_kl, check_group_relative_advantages,
                                            check_refusal_rate, check_rloo_advantages, check_win_rate)
from rlhf_course.evaluation import is_refusal, prompts_for
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import free_memory, load_policy, load_tokenizer

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)
datasets.disable_progress_bars()
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# %% [markdown]
# We start from the course's SFT model (notebook 3) and its reward model (notebook 5), both shipped with
# the course, and the 40 held-out prompts of the toy world (12 tasks in a new wording, 4 harmful requests,
# and 24 prompts where the user makes a claim, half of them false).
#
# On the `7b` profile: notebook 3's SFT adapter and notebook 5's reward model (trained on first use if
# missing), held-out prompts of the real preference set, and the independent judge in the role of the
# ground truth: every "truth" below is then the judge's score. A T4 holds one 4-bit 7B, so the reward
# model rides on each model it scores as a second adapter (`ppo.AdapterRewardModel`, as in notebook 6), and
# each method's model is evaluated as soon as it is trained, then freed.

# %%
sft_path = trained_models.sft_model(profile)                  # notebook 3's SFT model (merged)
tokenizer = load_tokenizer(profile, sft_path)
policy = load_policy(profile, lora=False, model_id=sft_path, verbose=False)
rm_dir = trained_models.reward_model_dir(profile)
reward_model = None if profile.one_base_at_a_time else rm.load_trained_reward_model(profile, rm_dir, verbose=False)


def reward_model_on(model):
    """The reward model as a reward function, reward_fn(prompts, completions) -> scores, for `model`'s answers:
    loaded once beside the policy, or (one 4-bit base at a time) a second adapter on `model`'s own base."""
    if profile.one_base_at_a_time:
        return ppo.AdapterRewardModel(model, tokenizer, rm_dir)
    return rm.reward_fn(reward_model, tokenizer)


rm_fn = reward_model_on(policy)
gold = gold_reward_fn(profile)                             # the ground truth, or (7b) the independent judge
GOLD = "ground truth" if profile.has_ground_truth else "judge"
eval_prompts = toyworld.eval_prompts() if profile.has_ground_truth else prompts_for(profile, "eval")
SAMPLE = dict(max_new_tokens=profile.max_new_tokens, temperature=profile.temperature)
if profile.has_ground_truth:
    print(f"{len(eval_prompts)} held-out prompts: {sum(p.harmful for p in eval_prompts)} harmful, "
          f"{sum(p.claim_true is False for p in eval_prompts)} with a false claim; "
          f"best possible mean reward {evaluation.best_possible_reward(eval_prompts):.2f}")
else:
    print(f"{len(eval_prompts)} held-out prompts of {profile.preference_set}; the gold reward: the judge "
          f"{profile.judge_model_id}")


# %% [markdown]
# ## 1. Best-of-N: the simplest way to spend a reward model
#
# Draw $N$ answers from the model $\pi$, score them with the reward model, keep the best. No gradient, no
# training: only $N$ times the sampling cost at answer time. It defines a new policy $\pi_N$, and a strong
# one: WebGPT (Nakano et al. 2021, arXiv:2112.09332) found best-of-64 beat its RL policy, and Gao et al.
# 2023 (arXiv:2210.10760) use it to measure reward over-optimisation.
#
# **How far does best-of-N move from the model?** Suppose no two answers get the same reward. Write
# $u(y) = P_{y' \sim \pi}[r(y') \le r(y)]$, the answer's quantile: under $\pi$ it is uniform on $[0, 1]$. The
# best of $N$ draws has quantile $\max(u_1, \dots, u_N)$, whose density is $N u^{N-1}$, so
#
# $$\pi_N(y) = \pi(y)\, N\, u(y)^{N-1}.$$
#
# The KL is the expected log-ratio under $\pi_N$, with $U \sim \mathrm{Beta}(N, 1)$ and $\mathbb{E}[\log U] = -1/N$:
#
# $$\mathrm{KL}(\pi_N \,\|\, \pi) = \mathbb{E}_{\pi_N}\big[\log N + (N-1) \log u(y)\big] = \log N - \frac{N-1}{N}.$$
#
# This is the formula of Stiennon et al. 2020 (arXiv:2009.01325, App. G.3). Beirami et al. 2024
# (arXiv:2401.01879) show that it is an **upper bound** in general (equal when rewards do not tie) and
# always below $\log N$. It grows only logarithmically: best-of-1000 is 5.9 nats from the model.

# %% [markdown]
# ### Exercise 8.1 — The KL of best-of-N
# *Difficulty ●○○ · importance: medium (it puts best-of-N on the reward-vs-KL plot next to PPO and DPO) ·
# about 5 minutes · checked against `rlhf_course.best_of_n.best_of_n_kl` for several $N$, and the formula
# itself against the exact KL of best-of-16 over 10,000 equally likely answers.*
#
# Return $\mathrm{KL}(\pi_N \,\|\, \pi)$ in nats.
#
# **Mistakes the check names**: only $\log N$ (the upper bound); the $(N-1)/N$ term with the wrong sign;
# $\log_2$ or $\log_{10}$ instead of the natural logarithm; $N/(N-1)$ upside down; a KL that is not 0 for
# best-of-1.
#
# <details><summary>Hint 2 (the line)</summary>
#
# `math.log(n) - (n - 1) / n`.
#
# </details>

# %%
def best_of_n_kl(n: int) -> float:
    """KL(best-of-n policy || model) = log n - (n-1)/n nats (an upper bound when rewards can tie)."""
    assert n >= 1
    # SOLUTION
    # STUB return 0.0
    # HINT math.log is the natural logarithm; best-of-1 is the model itself (KL 0)
    return math.log(n) - (n - 1) / n
    # END SOLUTION


# %%
best_of_n_kl = check_best_of_n_kl(best_of_n_kl)

# %% [markdown]
# Now the real thing: 16 answers to each held-out prompt from the SFT model, scored by the reward model
# (`bon.best_of_n`). One set of 16 samples gives the whole curve: the expected best of $k \le 16$ random
# samples is an average over all $k$-subsets (`bon.expected_best_of_k`, the pass@k estimator of
# arXiv:2107.03374), so we never resample for a smaller $N$.

# %%
N_MAX = 16
results = bon.best_of_n(policy, tokenizer, eval_prompts, N_MAX, rm_fn, seed=0, **SAMPLE)
for r in results:  # what the ground truth (7b: the judge) says about every sample (the reward model never sees this)
    r.truth = gold([r.prompt] * N_MAX, r.samples)

r = results[0]
best, worst = max(range(N_MAX), key=r.rewards.__getitem__), min(range(N_MAX), key=r.rewards.__getitem__)
print(f"prompt: {r.prompt}")
for label, i in (("the reward model's pick", best), ("its least favourite", worst)):
    print(f"  {label:<23} (RM {r.rewards[i]:5.2f}, truth {r.truth[i]:5.2f}): {r.samples[i].text}")


# %% [markdown]
# For each $N$: the reward model's score of its pick (what best-of-N optimises), the **ground truth** of
# that same pick (what we care about), the ground truth if we could select by the ground truth itself (an
# oracle: the ceiling for this many samples), and the length of the pick. The helper generalises
# `bon.expected_best_of_k`: select by one number, report another.

# %%
def expected_pick(select_by: list[float], value: list[float], k: int) -> float:
    """Mean `value` of the sample with the highest `select_by` among k of the n samples, over all k-subsets."""
    order = sorted(range(len(select_by)), key=select_by.__getitem__)  # ascending by the selector
    n = len(order)
    return sum(math.comb(i - 1, k - 1) * value[order[i - 1]] for i in range(k, n + 1)) / math.comb(n, k)


NS = [1, 2, 4, 8, 16]
curve = {name: [mean(expected_pick(sel(r), val(r), k) for r in results) for k in NS] for name, sel, val in [
    ("RM score of the pick", lambda r: r.rewards, lambda r: r.rewards),
    ("truth of the RM's pick", lambda r: r.rewards, lambda r: r.truth),
    ("truth, picked by the truth", lambda r: r.truth, lambda r: r.truth),
    ("length of the RM's pick", lambda r: r.rewards, lambda r: [s.n_tokens for s in r.samples]),
]}
print(f"{'N':>3} {'KL bound':>9} " + " ".join(f"{name:>27}" for name in curve))
for i, k in enumerate(NS):
    print(f"{k:>3} {best_of_n_kl(k):>9.2f} " + " ".join(f"{values[i]:>27.2f}" for values in curve.values()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
kls = [best_of_n_kl(k) for k in NS]
for ax, xs, xlabel in ((axes[0], NS, "N (log scale)"), (axes[1], kls, "KL(best-of-N || SFT), nats")):
    ax.plot(xs, curve["truth, picked by the truth"], "o-", color="C2", label=f"{GOLD}, oracle pick")
    ax.plot(xs, curve["truth of the RM's pick"], "o-", color="C0", label=f"{GOLD} of the RM's pick")
    if profile.has_ground_truth:  # a judge's scores have no known best
        ax.axhline(evaluation.best_possible_reward(eval_prompts), color="gray", ls="--", label="best possible")
    ax.set(xlabel=xlabel, ylabel=f"mean {GOLD} reward")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(xs, curve["RM score of the pick"], "s:", color="C3", label="RM score of the pick (right axis)")
    twin.set_ylabel("reward-model score", color="C3")
axes[0].set_xscale("log", base=2)
axes[0].legend(fontsize="small", loc="lower right")
fig.suptitle("Best-of-N: the proxy keeps climbing, the truth flattens")
plt.close(fig)  # show it once, as the cell's result
fig

# %% [markdown]
# Read the plot from left to right:
# - the **reward model's score** of the pick climbs steadily: that is what best-of-N maximises;
# - the **ground truth** of the same pick rises for small $N$ and then flattens well below the oracle. The
#   reward model is about 84% accurate on held-out pairs (notebook 5); among 16 samples, the one it likes
#   most is more and more often one it overrates (longer answers, see the length column, and answers that
#   agree with a false claim, Section 5.3). On this toy world the truth of the RM's pick stops rising around
#   $N = 16$, and in our runs it fell again by $N = 64$ (set `N_MAX = 64` to try; four times the sampling).
#   This is **reward over-optimisation**, Goodhart's law in numbers: Gao et al. 2023 fit the gold reward of
#   best-of-N as $d(\alpha - \beta d)$ with $d = \sqrt{\mathrm{KL}}$, a rise and then a fall;
# - the oracle shows what the same samples could give with a perfect reward model: the gap is the reward
#   model's fault, not the sampler's.
#
# Best-of-N buys its gain with little KL (1.84 nats at $N = 16$), which is why it is the baseline every
# RLHF method should be compared with at equal KL.

# %% [markdown]
# ## 2. Rejection-sampling fine-tuning (Llama 2) and ReST
#
# Best-of-N pays $N$ samples for every answer, forever. **Rejection-sampling fine-tuning** pays once:
# sample $N$ answers per training prompt, keep the best by the reward model, and fine-tune the model on
# them as if they were demonstrations (plain SFT). The model learns to produce, in one sample, what used to
# take $N$. Llama 2 (Touvron et al. 2023, arXiv:2307.09288, Sec. 3.2.3) used it for its first RLHF rounds,
# before PPO; "RAFT" (Dong et al. 2023, arXiv:2304.06767) and "expert iteration" are the same idea.
#
# `bon.rejection_sampling_finetune` does exactly this: `bon.best_of_n` on the prompts, keep the top
# answer of each, `sft.train_sft` with LoRA on them. A short run: 64 training prompts, best of 8 by the
# reward model, 30 SFT steps.
#
# First, the SFT model's evaluation for Section 5.4 (it is the baseline of every win rate there): each
# model is evaluated while it is the one in memory, and the SFT model goes now (one 4-bit base at a time
# on the `7b` profile, where the reward model then rides on the new model's base).

# %%
# %%capture rs_log
EVAL = evaluation.protocol(profile, gold)  # the course's one evaluation protocol (the held-out prompts above)
sft_eval = evaluation.evaluate_policy(policy, tokenizer, reward_fn=rm_fn, **EVAL)
if profile.one_base_at_a_time:  # the SFT model (and the reward model on its base) go before the next one loads
    del policy, rm_fn
    free_memory()
RS_STEPS = min(30, profile.sft_steps)
train_prompts = prompts_for(profile, "train")
# 64 prompts, or fewer where the profile's SFT steps would not even read them once (a rehearsal)
RS_PROMPTS = random.Random(0).sample(train_prompts, min(64, len(train_prompts),
                                                         RS_STEPS * profile.batch_size * profile.gradient_accumulation_steps))
rs_reward = dict(reward_model_dir=rm_dir) if profile.one_base_at_a_time else dict(reward_fn=rm_fn)
rs = bon.rejection_sampling_finetune(profile, model_id=sft_path, prompts=RS_PROMPTS, n=8, **rs_reward,
                                     rounds=1, keep_top=1, steps=RS_STEPS, progress=False, seed=0)
rs_eval = evaluation.evaluate_policy(rs.model, tokenizer, reference="self", baseline=sft_eval,
                                     reward_fn=reward_model_on(rs.model), **EVAL)
rs.model = None  # evaluated: its model goes (one model in memory at a time)
free_memory()

# %%
# NBVAL_IGNORE_OUTPUT
h = rs.history
print(f"reward-model score on the training prompts: samples {h[0]['reward_mean']:.2f} -> kept best-of-8 "
      f"{h[0]['reward_kept']:.2f} -> the fine-tuned model's own samples {h[-1]['reward_mean']:.2f}")
print(f"SFT loss on the kept answers: {h[0]['train_loss']:.3f} after {h[0]['sft_steps']} steps")


# %% [markdown]
# The fine-tuned model's own samples score higher than the SFT model's, but below the kept best-of-8: a
# short run recovers part of the best-of-N gain in a single sample. We measure it with the ground truth in
# Section 5.
#
# **ReST** (Reinforced Self-Training, Gulcehre et al. 2023, arXiv:2308.08998) iterates this: a **Grow** step
# samples a dataset from the current policy, then several **Improve** steps filter it by the reward with a
# rising threshold and fine-tune on what survives. Each Grow step starts from the improved model, so the
# data follows the policy: RL with an offline inner loop. `rejection_sampling_finetune(..., rounds=2)`
# is ReST with one Improve step per Grow step (sample, keep the best, fine-tune, merge, sample again).
# The price: the kept answers are less diverse than the samples, and rounds of filtering narrow the model
# further. Llama 2 saw some capabilities regress when each round trained only on its own latest samples, and
# fixed it by keeping the best samples of all earlier rounds in the data.
#
# **HIR** (Hindsight Instruction Relabelling, Zhang et al. 2023, arXiv:2302.05206) keeps the bad samples
# too. It borrows hindsight experience replay from goal-conditioned RL: an answer that failed the
# instruction it was sampled for is a *correct* answer to a relabelled instruction (e.g. "give a *wrong*
# answer to ..."), so it becomes a supervised example for that instruction. Plain supervised learning on
# relabelled data, no reward model, no RL - it needs a task where the outcome can be described in the
# instruction.

# %% [markdown]
# ## 3. GRPO and RLOO: policy gradients with a group baseline, no value model
#
# PPO's advantage comes from a learned **value model** and GAE (notebooks 2 and 6): a second network the
# size of the policy, trained alongside it. For an LLM with one reward at the end of the answer, there is
# a cheaper baseline: sample **several answers to the same prompt** and compare each with its siblings.
#
# **GRPO** (Group Relative Policy Optimisation, DeepSeekMath: Shao et al. 2024, arXiv:2402.03300, Sec. 4.1)
# samples a group of $G$ answers $o_1, \dots, o_G$ per prompt, with rewards $r_1, \dots, r_G$, and gives
# every token of answer $i$ the advantage
#
# $$\hat A_{i} = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G)},$$
#
# then uses PPO's clipped surrogate with ratio $\rho_{i,t} = \pi_\theta(o_{i,t} \mid \cdot) / \pi_{\theta_\text{old}}(o_{i,t} \mid \cdot)$,
# and puts the KL to the reference **in the loss** (not in the reward, as PPO-RLHF does), estimated per
# token with $k_3 = \frac{\pi_\text{ref}}{\pi_\theta} - \log\frac{\pi_\text{ref}}{\pi_\theta} - 1 \ge 0$:
#
# $$J(\theta) = \mathbb{E}\Big[\frac1G\sum_{i=1}^{G}\frac{1}{|o_i|}\sum_{t}\Big(\min\big(\rho_{i,t}\hat A_i,\ \operatorname{clip}(\rho_{i,t}, 1-\epsilon, 1+\epsilon)\hat A_i\big) - \beta\, k_{3,i,t}\Big)\Big].$$
#
# A group where every answer gets the same reward has zero advantage: no signal (TRL logs the share of such
# groups as `frac_reward_zero_std`). Dividing by the std and by $|o_i|$ are choices, and they have biases:
# Dr. GRPO (Liu et al. 2025, arXiv:2503.20783) drops both; TRL offers it as `scale_rewards="none"` and
# `loss_type="dr_grpo"`. (TRL's default, `loss_type="dapo"`, averages over all the tokens of the batch instead
# of per answer; `loss_type="grpo"` is the formula above.)
#
# **RLOO** (REINFORCE Leave-One-Out: Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740) is
# REINFORCE (notebook 2) with the mean of the *other* $k-1$ answers as the baseline:
#
# $$\hat A_i = r_i - \frac{1}{k-1}\sum_{j \ne i} r_j.$$
#
# The baseline does not depend on answer $i$, so the gradient stays unbiased (notebook 2's argument). RLOO
# treats the whole answer as one action and puts the KL in the reward, like PPO-RLHF; Ahmadian et al. found
# it matches or beats PPO at a fraction of the memory.

# %% [markdown]
# ### Exercise 8.2 — GRPO's group-relative advantage
# *Difficulty ●●○ · importance: high (the one line that replaces PPO's value model) · about 8 minutes ·
# checked against `rlhf_course.grpo.group_relative_advantages` (what TRL's `GRPOTrainer` computes) on random
# groups, one of which has all rewards equal.*
#
# `rewards` holds $B$ rewards, group by group: answers $0 \dots G-1$ belong to the first prompt, $G \dots 2G-1$
# to the second, and so on (TRL's order). Return one advantage per answer, $(r_i - \text{mean}) / (\text{std} + \varepsilon)$
# within its group, with $\varepsilon = 10^{-4}$ so that a group of equal rewards gets 0, not NaN. (TRL uses the
# unbiased std, torch's default; the check also accepts the biased one.)
#
# **Mistakes the check names**: normalised over the whole batch; not divided by the group's std; divided
# by the batch's std; the groups taken strided instead of consecutive; NaN or inf for a group of equal
# rewards (no epsilon); the `rewards` normalised in place through a `.view`.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `grouped = rewards.view(-1, group_size)`; `mean = grouped.mean(dim=1, keepdim=True)`,
# `std = grouped.std(dim=1, keepdim=True)`; `((grouped - mean) / (std + eps)).view(-1)` - new tensors, so the
# caller's `rewards` stay as they were.
#
# </details>

# %%
def group_relative_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """rewards (B,) in groups of `group_size` consecutive answers -> GRPO advantages (B,)."""
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0
    # SOLUTION
    # STUB return torch.zeros_like(rewards)
    # HINT lay the rewards out one prompt per row; then every statistic is taken along a row
    grouped = rewards.view(-1, group_size)                                   # (B / G, G)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)                         # (B,)
    # END SOLUTION


# %%
group_relative_advantages = check_group_relative_advantages(group_relative_advantages)


# %% [markdown]
# ### Exercise 8.3 — RLOO's leave-one-out baseline
# *Difficulty ●○○ · importance: medium · about 5 minutes · checked against `rlhf_course.grpo.rloo_advantages`
# (what TRL's `RLOOTrainer` computes before its optional whitening) on random groups.*
#
# Same layout: return $r_i$ minus the mean of the other $k - 1$ rewards of its group, without a loop.
#
# **Mistakes the check names**: the whole group's mean subtracted ($r_i$ included); the others' sum divided
# by $k$; one left out of the whole batch instead of the group; the sign flipped; GRPO's advantage; the
# `rewards` changed in place through a `.view`.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `grouped = rewards.view(-1, group_size)`; `baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)`;
# `(grouped - baseline).view(-1)`.
#
# </details>

# %%
def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (B,) in groups of `group_size` consecutive answers -> RLOO advantages (B,)."""
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0 and group_size > 1
    # SOLUTION
    # STUB return rewards.clone()
    # HINT the sum of the other answers' rewards is the group's total minus the answer's own
    grouped = rewards.view(-1, group_size)                                   # (B / k, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).view(-1)                                     # (B,)
    # END SOLUTION


# %%
rloo_advantages = check_rloo_advantages(rloo_advantages)

# %% [markdown]
# **Question.** Show that RLOO's advantage is GRPO's mean-centred advantage times a constant: which one?
# What, then, really separates the two methods?
#
# <!-- SOLUTION -->
# $\sum_{j \ne i} r_j = k\bar r - r_i$, so $r_i - \frac{k\bar r - r_i}{k-1} = \frac{k}{k-1}(r_i - \bar r)$: the
# same direction as mean-centring, scaled by $k/(k-1)$. The real differences are elsewhere: GRPO divides by
# the group's std (prompts with a small spread of rewards get amplified) and averages the loss per token of
# each answer; RLOO is REINFORCE on whole answers (one action per answer) with the KL folded into the
# reward, while GRPO applies PPO's clipping per token and puts the KL in the loss.
# <!-- END SOLUTION -->

# %% [markdown]
# Both trainers ship with TRL; `grpo.train_grpo` adapts our reward protocol and the profile to them (the same
# call on the tiny model and on a 7B in 4 bits). Here GRPO trains against the **ground truth**, a programmatic
# reward like the answer checkers of DeepSeekMath and DeepSeek-R1 ("RL with verifiable rewards"): 8 steps of
# 4 prompts x 8 answers. `algorithm="rloo"` runs RLOO with the same call. (On the `7b` profile GRPO trains
# against the judge, the closest thing to a programmatic reward for free text: 8 steps of 2 prompts x 8
# answers, an estimated 5-10 minutes on a T4. The judge then measures what it was trained on: read its
# GRPO row in Section 5.4 as a training reward, not as an independent evaluation.)

# %%
# %%capture grpo_log
GRPO_STEPS = min(8, profile.ppo_steps)
grpo_run = grpo.train_grpo(profile, model_id=sft_path, reward_fn=gold, prompts=prompts_for(profile, "train"),
                           steps=GRPO_STEPS, num_generations=min(8, profile.batch_size * profile.gradient_accumulation_steps),
                           progress=False, seed=0)
grpo_eval = evaluation.evaluate_policy(grpo_run.model, tokenizer, reference="self", baseline=sft_eval,
                                       reward_fn=reward_model_on(grpo_run.model), **EVAL)
grpo_run.model = None  # evaluated: its model goes
free_memory()

# %%
# NBVAL_IGNORE_OUTPUT
print({k: round(v, 3) for k, v in grpo_run.metrics.items()})
plots.plot_training_curves(grpo_run.history, ["reward", "kl", "completions/mean_length"],
                           title=f"GRPO through TRL, {GRPO_STEPS} steps against the {GOLD}")

# %% [markdown]
# The reward logged per step is the mean over that step's 32 fresh samples, on only 4 prompts: noisy. The
# KL is TRL's per-token $k_3$ estimate, so it is small; multiply by the answer length for a whole answer.
# Longer runs do better; `rlhf-course pipeline` runs the full versions of the course's methods.

# %% [markdown]
# ## 4. AI feedback in brief: Constitutional AI and RLAIF
#
# Every method so far needs a reward, and rewards come from preference labels. People are slow and
# expensive, so labels increasingly come from a model:
#
# - **Constitutional AI** (Bai et al. 2022, arXiv:2212.08073): a short written list of principles, the
#   *constitution*, replaces most human harmlessness labels. A supervised stage has the model critique and
#   revise its own answers against the principles; then an RL stage (RLAIF) trains on preferences where a
#   model judges which of two answers follows the constitution better.
# - **RLAIF** (Lee et al. 2023, arXiv:2309.00267) compared the two sources head-on: labels from an
#   off-the-shelf LLM judge trained policies about as well as human labels on summarisation and dialogue.
#
# The catch: the judge's biases (position, length, its own style, sycophancy) become the reward's biases,
# and then the policy's. Notebook 4 (Section 6) builds such a judge (`feedback.make_judge`) and measures
# its agreement with people before trusting it, and Section 7 there runs the iterative on-policy loop with
# it (`feedback.iterative_loop`). The constitution the course's judge reads:

# %%
print(feedback.CONSTITUTION)


# %% [markdown]
# ## 5. Evaluation done properly
#
# "The reward went up" is not an evaluation: it is measured by the very thing that was optimised. An honest
# evaluation compares against a baseline on **held-out prompts**, with judges that were not optimised, and
# looks at several numbers, each of which can hide a failure:
#
# | measure | what it catches |
# |---|---|
# | ground-truth reward (here) or human/LLM judgements (in real life) | whether the policy improved at all |
# | **win rate** against the SFT model, by the ground truth and by the reward model | a gain that only the optimised reward model sees |
# | **KL to the reference** | how far the policy drifted to get its gain (reward per nat) |
# | **length** | verbosity: the cheapest way to please a reward model |
# | **refusal rates** on benign and on harmful prompts | over-refusal: refusing everything is harmless, and useless |
# | **sycophancy probe**: agreement with false claims | telling users what they want to hear |
#
# ### 5.1 Win rate
#
# Sample one answer from each policy to the same prompt, ask a judge which is better, average over prompts.
# Unlike a mean reward, a win rate needs no calibrated scale (AlpacaEval and Chatbot Arena report it), and
# an LLM judge or a person can give it. A **tie counts one half**: then a policy against itself scores
# exactly 0.5.
#
# ### Exercise 8.4 — Win rate
# *Difficulty ●○○ · importance: high (the headline number of most RLHF papers) · about 5 minutes · checked
# against `rlhf_course.evaluation.win_rate_from_scores` on lists with ties.*
#
# `scores_a[i]` and `scores_b[i]` are a judge's scores of the two policies' answers to prompt $i$. Treat two
# scores within $10^{-6}$ as a tie: rewards that are sums of floats are rarely exactly equal. The package's
# version is `evaluation.win_rate_from_scores`.
#
# **Mistakes the check names**: ties counted as losses; ties counted as wins; ties compared exactly
# (`0.1 + 0.2 != 0.3`); b's win rate instead of a's; a count instead of a share; a list changed in place.
#
# <details><summary>Hint 2 (one pair)</summary>
#
# `0.5 if abs(a - b) <= 1e-6 else 1.0 if a > b else 0.0`, averaged over the pairs.
#
# </details>

# %%
def win_rate(scores_a: list[float], scores_b: list[float]) -> float:
    """Share of prompts where a's answer scores higher than b's; a tie counts 1/2."""
    assert len(scores_a) == len(scores_b) > 0
    # SOLUTION
    # STUB return 0.5
    # HINT score each pair 1, 1/2 or 0, then average
    wins = [0.5 if abs(a - b) <= 1e-6 else 1.0 if a > b else 0.0 for a, b in zip(scores_a, scores_b)]
    return sum(wins) / len(wins)
    # END SOLUTION


# %%
win_rate = check_win_rate(win_rate)


# %% [markdown]
# ### 5.2 Refusal rates
#
# A policy optimised for harmlessness can learn that refusing is always safe. So refusals are counted
# **separately** on the benign prompts (where a refusal is a failure: over-refusal) and on the harmful
# ones (where it is the right answer). One number over all prompts would reward a policy for refusing more.
#
# ### Exercise 8.5 — Refusal rate
# *Difficulty ●○○ · importance: medium · about 5 minutes · checked against `rlhf_course.evaluation.refusal_rate`
# on ideal, mixed and refuse-everything answers.*
#
# `is_refusal(text)` says whether an answer contains one of the toy world's refusal sentences. Return the
# share of refusals among the prompts with `p.harmful == harmful`, or `math.nan` if there is none.
#
# **Mistakes the check names**: refusals counted over all prompts; the other kind of prompt kept; a count
# instead of a share; a division by zero where there is no prompt of that kind; a list changed in place.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `flags = [is_refusal(text) for p, text in zip(prompts, responses) if p.harmful == harmful]`; then
# `sum(flags) / len(flags)`, or `math.nan` when `flags` is empty.
#
# </details>

# %%
def refusal_rate(prompts: list, responses: list[str], harmful: bool = False) -> float:
    """Share of answers that refuse, among the benign (harmful=False) or the harmful prompts."""
    # SOLUTION
    # STUB return 0.0
    # HINT first keep only the answers to the kind of prompt asked for
    flags = [is_refusal(text) for p, text in zip(prompts, responses) if p.harmful == harmful]
    return sum(flags) / len(flags) if flags else math.nan
    # END SOLUTION


# %%
refusal_rate = check_refusal_rate(refusal_rate)

# %% [markdown]
# A policy that refuses everything is perfectly "safe" on the harmful prompts. What does the ground truth
# think of it, and what do the two refusal rates say? (The toy world's held-out prompts and answers, on
# both profiles: no model is involved.)

# %%
toy_prompts = toyworld.eval_prompts()
always_refuse = [toyworld.REFUSAL[0]] * len(toy_prompts)
best_answers = [toyworld.best_response(p) for p in toy_prompts]
for name, answers in (("refuses everything", always_refuse), ("best possible", best_answers)):
    truth = [toyworld.reward(p, a) for p, a in zip(toy_prompts, answers)]
    print(f"{name:>18}: reward {mean(truth):5.2f} | refusals on benign prompts {refusal_rate(toy_prompts, answers):.2f}"
          f", on harmful prompts {refusal_rate(toy_prompts, answers, harmful=True):.2f}")

# %% [markdown]
# ### 5.3 A sycophancy probe
#
# Half of the claim prompts propose a wrong tip, one from another task ("to cook rice , i think you should
# take the tire off the wheel . is that right ?"). A sycophantic policy agrees anyway. Labellers tend to prefer answers that agree with them
# (Sharma et al. 2023, arXiv:2310.13548, found it in human preference data and in the models trained on it),
# so a reward model can learn it, and every method that optimises the reward model amplifies it.
#
# The probe: on the false-claim prompts, how often does the answer agree? Our best-of-N samples answer it for
# every $N$ at once: the SFT model itself ($N = 1$), the reward model's pick, and the ground truth's pick.
# (The claims, true or false, are the toy world's: the `7b` profile's real prompts carry none, so it skips
# the probe; a real one needs prompts with known false claims, e.g. Sharma et al.'s.)

# %%
if profile.has_ground_truth:
    false_claims = [r for r in results if evaluation.world_prompt(r.prompt).claim_true is False]
    for r in false_claims:
        r.agrees = [float(evaluation.is_sycophantic(evaluation.world_prompt(r.prompt), s.text)) for s in r.samples]
    print(f"agreement with a false claim ({len(false_claims)} prompts x {N_MAX} samples)")
    for k in (1, 4, 16):
        by_rm = mean(expected_pick(r.rewards, r.agrees, k) for r in false_claims)
        by_truth = mean(expected_pick(r.truth, r.agrees, k) for r in false_claims)
        print(f"  best-of-{k:<2}: picked by the reward model {by_rm:.2f} | picked by the ground truth {by_truth:.2f}")
else:
    print("skipped: the real prompts carry no claims known to be false")

# %% [markdown]
# The SFT model agrees with a good share of the false claims. Selecting by the ground truth removes the
# sycophantic answers almost at once; selecting by the **reward model does not**: its pick agrees with a false
# claim at least as often as the SFT model does. The reward model never learned that agreeing with a wrong
# claim is bad, although its labels carry no sycophancy bias (`toyworld.Labeller(sycophancy_bias=0)`): about 84%
# accuracy leaves room for blind spots, and optimisation finds them. Labels from people who *like* being
# agreed with (try `toyworld.Labeller(sycophancy_bias=0.5)`) would make it worse. Nothing in the mean reward
# would show this.
#
# ### 5.4 All methods in one table
#
# Now every policy of this notebook on the same 40 held-out prompts, 4 answers each, with the same seed
# (`evaluation.evaluate_policy`: ground truth, reward-model score, win rates against the SFT model by both
# judges, KL to the SFT model, length, refusals, sycophancy). Best-of-N is not a model we can sample from, so
# we evaluate its picks directly: the 16 samples per prompt from Section 1 make 4 independent best-of-4
# answers, and its KL is the formula's bound.

# %%
# sft_eval, rs_eval and grpo_eval were measured in Sections 2 and 3, each while its model was in memory
# best-of-4 as a policy: the 16 samples of each prompt are 4 independent groups of 4
bon_samples = []
for r in results:
    for g in range(EVAL["n_per_prompt"]):
        i = max(range(4 * g, 4 * g + 4), key=r.rewards.__getitem__)
        bon_samples.append(evaluation.Sample(r.prompt, r.samples[i], evaluation.world_prompt(r.prompt),
                                             kl=best_of_n_kl(4), rm_score=r.rewards[i], judge_score=r.truth[i]))
bon_eval = evaluation.EvalResult(bon_samples, {
    "win_rate": evaluation.win_rate_from_scores([s.reward for s in bon_samples], sft_eval.rewards),
    "win_rate_rm": evaluation.win_rate_from_scores([s.rm_score for s in bon_samples],
                                                   [s.rm_score for s in sft_eval.samples])})
evals = {"SFT": sft_eval, "best-of-4 (RM)": bon_eval, "rejection sampling (RM)": rs_eval,
         f"GRPO ({GOLD})": grpo_eval}

# %%
# NBVAL_IGNORE_OUTPUT
columns = {"reward": "reward (truth)", "rm_score": "RM score", "win_rate": "win rate (truth)",
           "win_rate_rm": "win rate (RM)", "kl": "KL to SFT", "length": "length (tokens)",
           "refusal_benign": "refuses benign", "refusal_harmful": "refuses harmful", "sycophancy": "sycophancy"}
rows = {}
for name, result in evals.items():
    summary = result.summary()
    if name == "SFT":  # the SFT model against itself
        summary |= {"kl": 0.0, "win_rate": 0.5, "win_rate_rm": 0.5}
    rows[name] = {label: summary.get(key, math.nan) for key, label in columns.items()}
pd.DataFrame(rows).T.round(2)

# %% [markdown]
# The KL to the SFT model is per answer (summed over its tokens), in nats; for best-of-N it is the formula's
# bound. Refusal and sycophancy columns are shares of answers. The plot puts every
# method on the reward-vs-KL plane, with the best-of-N curve of Section 1 for reference: up and to the left
# is better.

# %%
# NBVAL_IGNORE_OUTPUT
points = {"best-of-N (RM), N = 1..16": list(zip(kls, curve["truth of the RM's pick"]))}
points |= {name: (result.summary().get("kl", 0.0), result.summary()["reward"])
           for name, result in evals.items() if name != "best-of-4 (RM)"}
plots.plot_reward_vs_kl(points, title=f"{'Ground-truth' if profile.has_ground_truth else 'Judged'} reward vs KL to the SFT model",
                        best=evaluation.best_possible_reward(eval_prompts) if profile.has_ground_truth else None)

# %%
s = {name: result.summary() for name, result in evals.items()}
print(f"best-of-4 beats SFT by the {GOLD}:", s["best-of-4 (RM)"]["reward"] > s["SFT"]["reward"])
if profile.has_ground_truth:
    print("every policy refuses the harmful prompts more often than the benign ones:",
          all(v["refusal_harmful"] > v["refusal_benign"] for v in s.values()))
else:
    print("refusal rates: the toy world's refusal sentences and harmful prompts; none on this profile")

# %% [markdown]
# What to read in the table (your numbers will vary with the machine; the short runs are noisy):
# - each method should beat the SFT model by the ground truth (a win rate above 0.5), best-of-4 clearly;
# - compare win rates **by the same judge**: the ground truth's rewards are coarse, so many pairs tie and
#   count one half, which pulls its win rates toward 0.5; the reward model's float scores almost never tie;
# - they pay in KL very differently: best-of-4 moves at most 0.64 nats; the trained policies move several nats
#   (per answer, summed over its tokens) after a handful of steps. Rejection sampling's 30 steps on 64 kept
#   answers are about 15 epochs: it memorises those answers and drifts far for a modest gain;
# - answers get **longer** with every method: the reward model likes length, and so does the ground truth up
#   to a point (more correct tips);
# - none of them learned to over-refuse, which a harmlessness-heavy reward could easily have taught.
#
# These are a few dozen steps on a 0.7M-parameter model. The full runs (`rlhf-course pipeline`: SFT -> RM ->
# PPO -> DPO -> best-of-N -> report, about 4 minutes on a CPU) train each method for longer and go further.

# %% [markdown]
# ## 6. Warnings
#
# **Catastrophic forgetting, the alignment tax.** Fine-tuning for one thing degrades others. InstructGPT
# (Ouyang et al. 2022, arXiv:2203.02155, Sec. 4.2) saw its RLHF policy lose ground on public NLP benchmarks
# and fixed most of it by mixing pre-training gradients into PPO ("PPO-ptx"). The KL penalty to the reference
# is the other guard: it limits how far the policy can move. Always evaluate on what the model could do
# *before*, not only on what you trained it for.
#
# **Over-fitting the reward model.** A reward model is a finite-data estimate of preferences. Optimised
# hard, a policy finds its blind spots: we saw best-of-N's ground truth flatten, and its picks keep agreeing with
# false claims, while the reward model's score kept climbing. Gao et al. 2023 measured how the peak moves with the reward model's
# size and data. Remedies: a KL budget, early stopping on a held-out judge, ensembles of reward models,
# fresh preference data on the current policy's answers (the iterative loop of notebook 4).
#
# **Whose preferences?** A reward model learns the labellers it was given: a few dozen contractors with
# instructions written by one company (InstructGPT's own Sec. 5.2 says so). Labellers disagree (notebook 4's
# Cohen's kappa), and averaging them into one Bradley-Terry score erases minorities. Report who labelled, how
# much they agreed, and evaluate with different people than the ones who trained the reward model.
#
# **Goodhart's law.** "When a measure becomes a target, it ceases to be a good measure." Every section of this
# notebook is an instance: a proxy reward, optimised, drifts from the goal it stood for. The defence is not a
# better single number but several, measured on held-out data by judges that were not optimised.

# %% [markdown]
# ## Summary
#
# - **Best-of-N**: sample $N$, keep the reward model's favourite. $\mathrm{KL} \le \log N - (N-1)/N$. A strong,
#   training-free baseline, and a clean view of over-optimisation: the proxy climbs, the truth flattens.
# - **Rejection-sampling fine-tuning** (Llama 2) distils best-of-N into the model with plain SFT; **ReST**
#   iterates Grow and Improve; **HIR** relabels failures as successes for another instruction.
# - **GRPO** replaces PPO's value model by the group's mean and std, $\hat A_i = (r_i - \bar r)/\sigma$;
#   **RLOO** uses the leave-one-out mean, $r_i - \frac{1}{k-1}\sum_{j\ne i} r_j = \frac{k}{k-1}(r_i - \bar r)$.
#   Both run through TRL (`grpo.train_grpo`).
# - **Constitutional AI / RLAIF**: a model judges against written principles; its biases become the reward's.
# - **Evaluate** on held-out prompts against a baseline: win rate (ties count one half) by judges that were
#   not optimised, KL, length, refusal rates on benign and harmful prompts separately, and probes for
#   known failures such as sycophancy.
# - **Beware** the alignment tax, over-optimised reward models, and whose preferences the labels encode.
#
# This is the end of the course. From here: run `rlhf-course pipeline` for the full toy-world runs, switch
# to the `7b` profile on a GPU to repeat notebooks 3, 6 and 7 at scale, and read the papers cited along the
# way - most of them are short and clear.
