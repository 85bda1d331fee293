# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 9. The frontier: reward over-optimisation, GRPO's variants with verifiable rewards, the DPO family
#
# Every earlier notebook optimised a *proxy*: a reward model trained on labels. This one measures what
# that costs, with something no other course has: the toy world's **gold reward**, known exactly. You will
# watch the proxy keep rising while the gold reward peaks and falls - for best-of-n and for PPO - fit the
# functional forms of Gao, Schulman and Hilton (2022), and try the remedies on the same axes: the KL
# penalty, an ensemble of reward models, a length penalty. Then the methods a 2026 practitioner reaches
# for: GRPO with a **verifiable reward** and its variants (β = 0, Dr. GRPO, DAPO), the **DPO family**
# (IPO, SimPO, KTO, ORPO), and **online** DPO against offline DPO at the same labelling budget.
#
# **Learning goals**
# - measure reward over-optimisation: proxy and gold reward against $d = \sqrt{\mathrm{KL}}$ for best-of-n
#   (KL $= \log n - (n-1)/n$) and along a PPO run, and fit Gao et al.'s forms $d(\alpha - \beta d)$ and
#   $d(\alpha - \beta \log d)$;
# - compare the remedies on the same axes: a stronger KL penalty, a reward-model ensemble (mean and worst
#   case; Coste et al. 2023), a length penalty against the labellers' verbosity bias - and say which
#   failure each one addresses;
# - write a verifiable reward and run GRPO's variants as switches of TRL's `GRPOConfig`: `beta`,
#   `loss_type="dr_grpo"` with `scale_rewards="none"`, `epsilon_high` and dynamic sampling (DAPO);
# - write SimPO's loss, and know what KTO and ORPO change; read a methods table with seeds and spread.
#
# **Prerequisites**: notebook 6 (PPO, the KL penalty, the length-biased reward model), notebook 7 (DPO,
# IPO) and notebook 8 (best-of-n, GRPO). The SFT model and the reward models load from
# `rlhf_course.trained_models`: nothing to retrain. No GPU is needed.
#
# **Estimated time**: 60 minutes to work through. The notebook runs in about 1.5 minutes on a laptop CPU
# (tiny profile); the full-size runs behind its two tables take longer and run from the command line.

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import math
import warnings

import datasets
import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from rlhf_course import dpo_family, methods, toyworld, trained_models
from rlhf_course import overoptimization as oo
from rlhf_course import reward_model as rm
from rlhf_course.best_of_n import best_of_n_kl
from rlhf_course.checks.nb09_frontier import (
    check_ensemble_reward,
    check_fit_best_of_n,
    check_simpo_loss,
    check_steps_in_order,
)
from rlhf_course.loading import load_policy, load_tokenizer
from rlhf_course.parallel import start_jobs

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)
datasets.disable_progress_bars()
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
GOLD = profile.has_ground_truth  # the toy world's exact reward: the tiny profile only
SKIP = (f"skipped: this cell measures against the toy world's gold reward, which the {profile.name} profile does not have "
        "(a 7B answers in free text; its judge is an independent reward model, not a gold reward)")
# how long each live run trains here (the full-size runs: `rlhf-course overoptimization`, benchmarks/methods_table.py)
SIZES = dict(bon_prompts=16, n_max=64, ppo_steps=20, eval_every=5, family_steps=6, family_batch=16, grpo_steps=6,
             grpo_batch=16)
WORKERS = 2  # independent runs go to two processes of one thread each: the tiny model uses 2 cores best that way

# %% [markdown]
# We start from the course's SFT model (notebook 3). The **proxy** is the reward model of notebook 6 that
# learned its labellers' taste for long answers (`trained_models.reward_model_dir(profile, "length_biased")`):
# each extra sentence was worth 0.25 to them, whatever it said. Three more reward models were trained the
# same way, each on its own bootstrap sample of those labels with its own seed: with the first, an
# ensemble of four (`trained_models.reward_model_ensemble`, shipped with the course).

# %%
if GOLD:
    sft_path = trained_models.sft_model(profile)
    tokenizer = load_tokenizer(profile, sft_path)
    policy = load_policy(profile, lora=False, model_id=sft_path, verbose=False)
    members = [rm.reward_fn(rm.load_trained_reward_model(profile, path, verbose=False), tokenizer)
               for path in trained_models.reward_model_ensemble(profile)]
    proxy = members[0]  # the length-biased reward model of notebook 6
    print(f"{len(members)} length-biased reward models; the proxy is the first")
else:
    print(SKIP)

# %% [markdown]
# The PPO runs of Sections 1.2 and 2 take longest. They are independent of everything before them, so we
# start them now, in two background processes (`parallel.start_jobs`), and collect them when we need them:

# %%
if GOLD:
    ppo = dict(steps=SIZES["ppo_steps"], eval_every=SIZES["eval_every"])
    ppo_runs = start_jobs({"kl_coef 0.01": (oo.ppo_job, (profile, dict(kl_coef=0.01, **ppo))),
                           "kl_coef 0.2": (oo.ppo_job, (profile, dict(kl_coef=0.2, **ppo)))}, workers=WORKERS)
else:
    print(SKIP)

# %% [markdown]
# ## 1. Proxy and gold: reward over-optimisation
#
# Gao et al. (2022, arXiv:2210.10760) trained a large "gold" reward model on labels, used it to label data
# for smaller "proxy" reward models, optimised policies against the proxies, and measured both rewards as
# the policy moved away from where it started. Their x-axis is $d = \sqrt{\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{init}})}$,
# and the gold reward followed two simple forms, with $R$ the gold reward minus the initial policy's:
#
# $$R_{\text{best-of-}n}(d) = d\,(\alpha - \beta d), \qquad R_{\mathrm{RL}}(d) = d\,(\alpha - \beta \log d).$$
#
# Both rise, peak, and fall: past some distance, optimising the proxy harder makes the policy *worse*.
# Their proxy was itself learned from a model; ours is the real thing's simulation, and our gold reward
# is exact.
#
# ### 1.1 Best-of-n
#
# One draw of 64 answers per prompt from the SFT model (16 held-out prompts), scored by the proxy, gives
# every $n \le 64$: the expected gold reward of the proxy's favourite among $n$ answers is an average over
# all subsets of $n$ (`oo.expected_pick`, the estimator of notebook 8). Best-of-n's KL is analytic:
# $\log n - (n-1)/n$.

# %%
if GOLD:
    bon_prompts = [p.text for p in toyworld.eval_prompts()[: SIZES["bon_prompts"]]]
    draw = oo.draw(policy, tokenizer, bon_prompts, SIZES["n_max"], proxy, seed=0,
                   max_new_tokens=profile.max_new_tokens, temperature=profile.temperature)
    bon = oo.best_of_n_curve(draw)
    for i, member in enumerate(members[1:], start=1):  # the other three reward models' scores, for Section 2
        draw.score(f"member{i}", member)
else:
    print(SKIP)

# %%
# NBVAL_IGNORE_OUTPUT
if GOLD:
    print(pd.DataFrame(bon).round(3).to_string(index=False))

# %%
if GOLD:  # two facts that do not depend on the sample
    print("the proxy's score of its pick never falls as n grows:", all(a["proxy"] <= b["proxy"] for a, b in zip(bon, bon[1:])))
    print("KL column = log n - (n-1)/n:", all(abs(r["kl"] - best_of_n_kl(r["n"])) < 1e-12 for r in bon))

# %% [markdown]
# ### Exercise 9.1 — Fit Gao et al.'s best-of-n form
# *Difficulty ●●○ · importance: medium (the forms summarise a whole curve in two numbers, and give the
# peak) · about 10 minutes · checked against `rlhf_course.overoptimization.fit_best_of_n` on three noisy
# curves; common mistakes are named.*
#
# Given $d$ and the gain $R = $ gold $-$ gold at $d = 0$, return the least-squares $(\alpha, \beta)$ of
# $R(d) = d(\alpha - \beta d) = \alpha d - \beta d^2$. It is linear in $(\alpha, \beta)$: two features, and no
# intercept (the gain is 0 at $d = 0$ by definition).
#
# **Mistakes the check names**: $\beta$ with the wrong sign; $\alpha$ and $\beta$ swapped; a fit with an
# intercept; the KL on the x-axis instead of $d = \sqrt{\mathrm{KL}}$; the RL form $d(\alpha - \beta\log d)$
# instead of best-of-n's; inputs changed.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `features = torch.stack([d, -d**2], dim=1)` (float64 tensors), then
# `torch.linalg.lstsq(features, gain.unsqueeze(1)).solution.squeeze(1)` holds $(\alpha, \beta)$.
#
# </details>

# %%
def fit_best_of_n(d: list[float], gain: list[float]) -> tuple[float, float]:
    """Least squares (alpha, beta) of gain = d (alpha - beta d)."""
    assert len(d) == len(gain) >= 2
    # SOLUTION
    # STUB return 0.0, 0.0
    # HINT a least-squares problem A x = b: one column of A per coefficient, no column of ones
    d_t, r = torch.tensor(d, dtype=torch.float64), torch.tensor(gain, dtype=torch.float64)
    features = torch.stack([d_t, -d_t**2], dim=1)                      # (N, 2)
    alpha, beta = torch.linalg.lstsq(features, r.unsqueeze(1)).solution.squeeze(1).tolist()
    return alpha, beta
    # END SOLUTION


# %%
fit_best_of_n = check_fit_best_of_n(fit_best_of_n)

# %% [markdown]
# The fitted curve through the measured points (the package's `oo.fit_curve` does the same fit), with the
# proxy on the right axis:

# %%
# NBVAL_IGNORE_OUTPUT
if GOLD:
    bon_fit = oo.fit_curve(bon, "best_of_n")
    print(f"alpha {bon_fit['alpha']:.3f}, beta {bon_fit['beta']:.3f}: the fitted gold reward peaks at "
          f"d = {bon_fit['d_peak']:.2f}, KL {bon_fit['kl_peak']:.2f} nats (n = 1 ... {SIZES['n_max']} spans KL 0 ... "
          f"{bon[-1]['kl']:.2f})")
    display(oo.plot_curve(bon, bon_fit, title="Best-of-n against the length-biased proxy"))

# %% [markdown]
# The proxy climbs with every doubling of $n$ (it must: the expected best of more answers, by the
# selector itself, cannot fall). The gold reward climbs too at first - the proxy is right more often than
# not - then flattens from about $n = 16$. Whether it bends down by $n = 64$ depends on the draw: over four
# disjoint draws of 64 answers for each of the 40 held-out prompts, best-of-64's gold reward came out
# between 0.03 below and 0.03 above best-of-32's (-0.002, -0.007, +0.026, -0.029), and the lab's draw
# (`rlhf-course overoptimization`) 0.05 below. With 256 answers per prompt the estimate steadies: 0.573 at
# $n = 32$, 0.564 at 64, 0.538 at 128. So on this toy world best-of-n over-optimises only mildly, and not
# measurably before $n \approx 64$. Two reasons. Best-of-n moves slowly, $\log n$: even $n = 64$ is only
# 3.2 nats from the SFT model. And it can only pick among the SFT model's own answers, which are well
# formed: there a longer answer usually carries more tips as well as more filler, so the proxy's taste for
# length is often right. To see the fall clearly, a policy has to move further.
#
# ### 1.2 PPO with a weak KL penalty
#
# PPO (notebook 6's trainer, `ppo.PPOTrainer`) against the same proxy with `kl_coef = 0.01`, evaluated
# every 5 iterations on the 40 held-out prompts: the KL to the SFT model, the proxy's mean score and the
# gold reward (`oo.ppo_curve`, started above; this waits for it).

# %%
if GOLD:
    curves = ppo_runs()
    weak, leashed = curves["kl_coef 0.01"], curves["kl_coef 0.2"]
else:
    print(SKIP)

# %%
# NBVAL_IGNORE_OUTPUT
if GOLD:
    ppo_fit = oo.fit_curve(weak, "rl")
    print(pd.DataFrame(weak).round(3).to_string(index=False))
    display(oo.plot_curve(weak, ppo_fit, title="PPO, kl_coef 0.01, against the length-biased proxy"))

# %% [markdown]
# Read the table from top to bottom: the proxy rises at every evaluation, the answers get longer, and the
# gold reward rises for the first ten iterations (a gain of about 0.2), then falls while the KL jumps by
# several nats. The policy has found what the proxy likes and the gold reward does not: longer answers,
# then answers that leave the SFT model's distribution altogether, where the reward model was never
# trained and its scores mean nothing. This is Gao et al.'s RL curve. Its fitted peak tells you how far it
# paid to go - a number that only a gold reward can give, which is why real RLHF watches a held-out judge.
#
# ## 2. The remedies, on the same axes
#
# **The KL penalty.** The second run started above is the same PPO with `kl_coef = 0.2` (the pipeline's
# value): each nat of drift now costs reward, so the policy stops where its gain in proxy no longer pays
# for the distance. It is plotted below with the other remedies.
#
# **An ensemble of reward models** (Coste et al. 2023, "Reward model ensembles help mitigate
# overoptimization", arXiv:2310.02743). Several reward models trained on the same kind of labels make
# different errors; optimise their **mean** and the errors partly cancel, or their **worst case** (WCO: the
# lowest member's score) and the policy gains only where every member agrees. Members trained apart have
# their own offsets and scales (a Bradley-Terry reward is defined only up to a shift), so each is first
# standardised.
#
# ### Exercise 9.2 — Combine an ensemble
# *Difficulty ●○○ · importance: medium · about 5 minutes · checked against
# `rlhf_course.overoptimization.ensemble_reward` on members of very different scales, both aggregates.*
#
# `scores[i, j]` is member $i$'s score of answer $j$, shape $(k, N)$. Standardise each member over the $N$
# answers (mean 0, sample standard deviation 1; add 1e-6 to the std), then return, per answer, the mean
# over the members (`aggregate="mean"`) or the minimum (`"worst"`). Do not change `scores`.
#
# **Mistakes the check names**: members combined without standardising; standardised across the members
# instead of over the answers; centred but not scaled; the population std; the maximum as the worst case;
# the two aggregates swapped; `scores` changed in place (also when it is a non-contiguous view).
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `z = (scores - scores.mean(dim=1, keepdim=True)) / (scores.std(dim=1, keepdim=True) + 1e-6)`, then
# `z.mean(dim=0)` or `z.min(dim=0).values`.
#
# </details>

# %%
def ensemble_reward(scores: torch.Tensor, aggregate: str = "mean") -> torch.Tensor:
    """(k members, N answers) -> (N,): each member standardised over the answers, then the mean or the min."""
    assert scores.dim() == 2 and aggregate in ("mean", "worst")
    # SOLUTION
    # STUB return scores.mean(dim=0)
    # HINT each member is a row: its statistics are over dim 1; the members are combined over dim 0
    z = (scores - scores.mean(dim=1, keepdim=True)) / (scores.std(dim=1, keepdim=True) + 1e-6)   # (k, N)
    return z.mean(dim=0) if aggregate == "mean" else z.min(dim=0).values
    # END SOLUTION


# %%
ensemble_reward = check_ensemble_reward(ensemble_reward)

# %% [markdown]
# **A length penalty** (Singhal et al. 2023, "A long way to go: investigating length correlations in RLHF",
# arXiv:2310.03716): the labellers' bias is known - they liked length - so subtract it, $r - \lambda |y|$,
# with $\lambda = 0.05$ reward-model units per token (about half the proxy's own slope on length, which we
# measured at 0.09 per token over the SFT model's answers at fixed gold reward).
#
# For best-of-n every remedy is another way to pick among the same 64 answers: no more sampling, only the
# other three reward models' scores of the draw (computed in Section 1.1, while PPO trained):

# %%
if GOLD:
    oo.add_remedy_scores(draw, ["proxy"] + [f"member{i}" for i in range(1, len(members))], length_penalty=0.05)
    bon_remedies = {name: oo.best_of_n_curve(draw, name) for name in ("ensemble_mean", "ensemble_worst", "length_penalty")}
else:
    print(SKIP)

# %%
# NBVAL_IGNORE_OUTPUT
if GOLD:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    oo.plot_remedies({"proxy": bon, **bon_remedies}, title="Best-of-n: pick by ...", ax=axes[0])
    oo.plot_remedies({"kl_coef 0.01": weak, "kl_coef 0.2": leashed}, title="PPO: the KL penalty", ax=axes[1])
    plt.close(fig)
    display(fig)
    gold_at = {name: rows[-1]["gold"] for name, rows in {"proxy": bon, **bon_remedies}.items()}
    print("best-of-64's gold reward, picked by:", {k: round(v, 3) for k, v in gold_at.items()})
    print(f"PPO at the last evaluation: kl_coef 0.01 gold {weak[-1]['gold']:.3f} at KL {weak[-1]['kl']:.1f}; "
          f"kl_coef 0.2 gold {leashed[-1]['gold']:.3f} at KL {leashed[-1]['kl']:.1f}")

# %%
if GOLD:
    print("the KL penalty kept the policy closer to the SFT model:", leashed[-1]["kl"] < weak[-1]["kl"])

# %% [markdown]
# What the full-size lab measured (`rlhf-course overoptimization --out DIR`: 40 prompts, best-of-n up to
# 64, five PPO runs of 20 iterations, seed 0; the runs are deterministic on a given machine):
#
# | PPO against the length-biased proxy | gold at its peak (KL) | gold at iteration 20 (KL) | length at 20 |
# |---|---:|---:|---:|
# | kl_coef 0.01 (over-optimised) | 0.56 (1.9) | 0.39 (8.7) | 35 |
# | kl_coef 0.2: the KL penalty | 0.55 (2.0), still rising | 0.55 (2.0) | 33 |
# | ensemble of 4, mean | 0.57 (2.0) | 0.53 (4.1) | 36 |
# | ensemble of 4, worst case | 0.51 (1.1) | 0.48 (4.0) | 35 |
# | length penalty 0.05 / token | 0.54 (2.7) | 0.48 (5.3) | 34 |
#
# (The SFT model: 0.35, 23 tokens.) Each remedy answers a different failure. The **KL penalty** is the only
# one that held the gold reward: it limits *how far* the policy goes, whatever the proxy's error (five
# iterations more, it reached 0.57 at KL 1.6, while every other run kept falling: 0.32, 0.46, 0.25, 0.30).
# The **ensemble mean** delayed and softened the fall - its members' independent errors partly cancel -
# but did not stop it: all four learned the *same* bias from the same labellers, and averaging cannot
# remove an error every member shares. The **worst case** peaked lowest and, with almost no KL penalty,
# still drifted: the policy chased whichever member was lowest on each answer. Coste et al. pair ensembles
# with a KL penalty, and so should you. The **length penalty** removed part of the bias (a token shorter
# than the plain run at iteration 20) and slowed the fall, but not the drift off the SFT model's
# distribution that followed.
#
# **Question.** The ensemble's members were trained on bootstrap samples of the same biased labels. What
# would you change so that an ensemble protects against the verbosity bias too?
#
# <!-- SOLUTION -->
# Make the members' errors independent where it matters: train them on labels from different labellers
# (or different instructions), so that not all of them share the taste for length; or add a member that
# is blind to length (e.g. a reward model trained on length-matched pairs). An ensemble removes variance,
# not a bias its members share; for a known bias, correct it directly (the length penalty) and keep a
# KL penalty for the unknown ones.
# <!-- END SOLUTION -->
#
# ## 3. GRPO's variants, with a verifiable reward
#
# **RLVR** - reinforcement learning with verifiable rewards (Tülu 3, arXiv:2411.15124; DeepSeek-R1,
# arXiv:2501.12948) - swaps the learned reward model for a program that checks the answer. Nothing learned,
# so no reward model to over-optimise - but a program checks only what it checks. The toy world's
# checkable task: *a how-to answer is correct when it gives at least three of the task's own steps, in
# the order a how-to gives them, and nothing else, and it ended.* The gold reward also pays for a fourth
# and a fifth step, which the rule does not ask for.
#
# ### Exercise 9.3 — A verifiable reward
# *Difficulty ●○○ · importance: high (in RLVR the checker IS the reward: every hole in it is a hole the
# policy can find) · about 10 minutes · checked on ten hand-made answers, from right to subtly wrong.*
#
# `toyworld.TIPS[prompt.task]` lists the task's steps in order; `toyworld.split_sentences(response)` gives
# the answer's sentences.
#
# **Mistakes the check names** (one hand-made answer each): steps out of order; fewer than three; filler
# sentences; another task's step; a repeated step; an answer cut at the length limit; an empty answer; and,
# the other way, rejecting gaps (steps 1, 3, 5 are in order).
#
# <details><summary>Hint 2 (the lines)</summary>
#
# Return False unless `ended`, `len(sentences) >= 3` and every sentence is in `steps`; then
# `order = [steps.index(s) for s in sentences]` must satisfy `all(a < b for a, b in zip(order, order[1:]))`.
#
# </details>

# %%
def steps_in_order(prompt: toyworld.Prompt, response: str, ended: bool = True) -> bool:
    """True if the answer ended, every sentence is one of the task's steps, none repeated, at least three,
    in the order TIPS lists them."""
    steps = toyworld.TIPS[prompt.task]
    sentences = toyworld.split_sentences(response)
    # SOLUTION
    # STUB return len(sentences) >= 3
    # HINT rule out what cannot pass first; then compare each step's position in TIPS with the next one's
    if not ended or len(sentences) < 3 or not all(s in steps for s in sentences):
        return False
    order = [steps.index(s) for s in sentences]
    return all(a < b for a, b in zip(order, order[1:]))
    # END SOLUTION


# %%
steps_in_order = check_steps_in_order(steps_in_order)

# %% [markdown]
# **The variants** are switches of TRL's `GRPOConfig` (TRL 1.16 names), passed through
# `grpo.train_grpo` by `grpo_variants.train_variant`:
#
# | variant | what changes | `GRPOConfig` |
# |---|---|---|
# | GRPO (DeepSeekMath, arXiv:2402.03300) | $\hat A_i = (r_i - \bar r)/\sigma$; each answer's token losses averaged over its own length; a k3 KL in the loss | `loss_type="grpo"`, `scale_rewards="group"`, `beta=0.04` |
# | GRPO, β = 0 | no KL term, no reference forward pass | `beta=0.0` |
# | Dr. GRPO (arXiv:2503.20783) | no $1/|o_i|$ (it favours short right answers and long wrong ones) and no $1/\sigma$ (it over-weights too easy and too hard prompts) | `loss_type="dr_grpo"`, `scale_rewards="none"` |
# | DAPO (arXiv:2503.14476) | clip-higher $\varepsilon_{\text{low}} = 0.2$, $\varepsilon_{\text{high}} = 0.28$; token-level averaging over the batch; truncated answers masked; dynamic sampling; no KL | `epsilon_high=0.28`, `loss_type="dapo"`, `mask_truncated_completions=True`, and `DynamicSamplingGRPOTrainer` |
#
# TRL 1.16 has no switch for **dynamic sampling**: a group whose answers all pass (or all fail) has advantage
# 0 for every answer and teaches nothing. `grpo_variants.DynamicSamplingGRPOTrainer` over-samples twice the
# prompts and keeps the groups whose rewards are not all equal. And every variant takes two optimiser steps
# per generated batch (`num_iterations=2`): with one, the policy has not moved since sampling, the ratio
# $\pi/\pi_{\text{old}}$ is exactly 1, and no clip - symmetric or higher - ever acts.
#
# A short run of each (six steps of 16 answers), from the SFT model, on the 48 training how-to prompts,
# then evaluated on the 40 held-out prompts (`methods.methods_table`; the runs go to the two workers):

# %%
# NBVAL_IGNORE_OUTPUT
if GOLD:
    GRPO_NAMES = ["GRPO (β = 0.04)", "GRPO, β = 0", "Dr. GRPO", "DAPO"]
    small = methods.Sizes(grpo_steps=SIZES["grpo_steps"], family_steps=SIZES["family_steps"],
                          family_batch=SIZES["family_batch"], eval_n_per_prompt=1)
    # 16 answers per step (2 prompts x 8): half the course's batch, to keep this run short
    grpo_table = methods.methods_table(profile.replace(batch_size=SIZES["grpo_batch"]), small, seeds=(0,),
                                       methods=GRPO_NAMES, workers=WORKERS)
    columns = ("pass_rate", "gold", "kl", "length", "clip_ratio", "informative", "seconds")
    print(pd.DataFrame({name: {c: row["mean"].get(c, math.nan) for c in columns}
                        for name, row in grpo_table["rows"].items()}).T.round(3).to_string())
else:
    print(SKIP)

# %% [markdown]
# Six steps are enough to see the machinery, not to rank the variants: that takes longer runs and several
# seeds (the table in Section 5), and the pass rate here rests on 12 answers. Read `clip_ratio` (the share of tokens whose ratio left the clip range, on
# the second update of each batch: it would be 0 for every variant without `num_iterations=2`), `informative` (the
# share of DAPO's sampled groups whose rewards were not all equal: it falls as the policy learns and more
# groups pass whole) and `pass_rate` (the checker's verdict on the held-out how-to prompts; the SFT model's
# is the first row).
#
# ## 4. The DPO family
#
# DPO's successors each change one thing (`rlhf_course.dpo_family`, each loss checked against TRL 1.16 on
# the same batch to 1e-5 in `tests/test_dpo_family.py`):
#
# | loss | changes | reference model | TRL 1.16 |
# |---|---|---|---|
# | IPO (arXiv:2310.12036) | a squared loss on the log-ratio gap, which cannot grow forever | yes | `DPOTrainer(loss_type="ipo")` |
# | SimPO (arXiv:2405.14734) | reward = $\frac{\beta}{|y|}\log\pi(y|x)$, the average log-probability; a margin $\gamma$ | **no** | `trl.experimental.cpo.CPOTrainer(loss_type="simpo")` |
# | KTO (arXiv:2402.01306) | no pairs: each answer desirable or not, against a reference point $z_0 = \mathrm{KL}(\pi\|\pi_{\mathrm{ref}})$ | yes | `KTOTrainer` |
# | ORPO (arXiv:2403.07691) | SFT loss $+\ \lambda \cdot$ a log odds-ratio term; no separate SFT stage | **no** | `trl.experimental.orpo.ORPOTrainer` |
#
# ### Exercise 9.4 — SimPO's loss
# *Difficulty ●●○ · importance: medium · about 10 minutes · checked against
# `rlhf_course.dpo_family.simpo_loss` on random log-probabilities and lengths; values, rewards and gradient.*
#
# SimPO, Eq. 6 of arXiv:2405.14734:
# $\;\mathcal{L} = -\log\sigma\!\left(\frac{\beta}{|y_w|}\log\pi(y_w|x) - \frac{\beta}{|y_l|}\log\pi(y_l|x) - \gamma\right)$,
# averaged over the pairs. Return the loss and the implicit rewards $\frac{\beta}{|y|}\log\pi(y|x)$ of both
# answers, detached.
#
# **Mistakes the check names**: no length normalisation; $+\gamma$ instead of $-\gamma$; $\gamma$ inside
# $\beta$'s product; no $\beta$; chosen and rejected swapped; a sum instead of a mean; no log; DPO's form
# without $|y|$ and $\gamma$; rewards without $\beta$ or not detached; $-\log(\sigma(x))$, which overflows
# to inf on a large margin. Checked at three $(\beta, \gamma)$, with a tie and an extreme pair.
#
# <details><summary>Hint 2 (the lines)</summary>
#
# `chosen_rewards = beta * policy_chosen_logps / chosen_lengths` (the same for rejected), then
# `loss = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma).mean()`.
#
# </details>

# %%
def simpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor,
               beta: float = 2.0, gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs and lengths (B,) -> (loss, chosen_rewards, rejected_rewards)."""
    B = policy_chosen_logps.shape[0]
    assert policy_chosen_logps.shape == policy_rejected_logps.shape == chosen_lengths.shape == (B,)
    # SOLUTION
    # STUB return torch.tensor(0.0), torch.zeros(B), torch.zeros(B)
    # HINT compute each answer's implicit reward first; the loss is a logistic loss on their margin
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()
    # END SOLUTION


# %%
simpo_loss = check_simpo_loss(simpo_loss)

# %% [markdown]
# Now the five losses on the same footing: one training loop (`dpo_family.train_preference`: fresh LoRA
# adapter on the SFT model, AdamW, the same steps and batch for every loss), the toy world's labelled
# pairs, three seeds. One exception, measured: SimPO gets a third of the others' learning rate. With no
# reference model to hold it, at DPO's 3e-3 it left the SFT model's distribution within 40 steps (KL 57 ±
# 61 nats, gold -0.02 ± 0.38 over three seeds), as the SimPO paper warns (its most sensitive setting). The table gives each cell as mean ± std over the seeds, judged on the 40
# held-out prompts: the gold reward, the KL to the SFT model (nats per answer), the answers' length
# (tokens) and the training seconds.

# %%
# NBVAL_IGNORE_OUTPUT
if GOLD:
    family = methods.methods_table(profile, small, seeds=(0, 1, 2), methods=["DPO", "IPO", "SimPO", "KTO", "ORPO"],
                                   workers=WORKERS)
    display(pd.DataFrame({name: {c: f"{row['mean'][c]:.2f} ± {row['std'][c]:.2f}" if row["runs"][1:] else
                                 f"{row['mean'][c]:.2f}" for c in ("gold", "kl", "length", "seconds")}
                          for name, row in family["rows"].items()}).T)
else:
    print(SKIP)

# %%
if GOLD:
    print("three seeds per loss:", all(len(row["runs"]) == 3 for name, row in family["rows"].items() if name != "SFT (start)"))
    print("the reference-free losses need no reference forward pass:", dpo_family.REFERENCE_FREE)

# %% [markdown]
# Six steps of sixteen pairs are a sketch: the spread over seeds is often as large as the differences
# between losses. The full-size table (Section 5: forty steps of 32 pairs) is the one to read. What holds
# at both sizes: SimPO and ORPO need no reference model, so a step costs one forward pass instead of two
# (see the seconds); KTO needs only a thumbs-up or -down per answer, data that is far cheaper to collect
# than pairs.
#
# ## 5. Online against offline DPO, and the methods table
#
# Preference data goes stale: labels on the SFT model's answers say little about the mistakes of the model
# after training. **Online** DPO labels pairs sampled from the current policy, round after round (Guo et
# al. 2024, arXiv:2402.04792; Xiong et al. 2023, arXiv:2312.11456). At the **same labelling budget** -
# the same judge (the course's reward model, `feedback.RewardModelJudge`), the same number of labelled
# pairs and DPO steps - offline DPO labels all its pairs once, on the SFT model's answers. Notebook 4's
# `feedback.iterative_loop` runs both: rounds = 2 against rounds = 1 with twice the pairs and steps
# (`methods.dpo_loop_run`).
#
# Every method of this notebook, at full size, three seeds (`python benchmarks/methods_table.py --out DIR`,
# measured on the 2-core machine under load from other jobs; mean ± std over seeds 0, 1, 2):
#
# | method | group | gold reward | KL to SFT (nats) | length (tokens) | train seconds |
# |---|---|---:|---:|---:|---:|
# | SFT (start) | start | 0.36 | 0.00 | 23.4 | 0 |
# | DPO | DPO family | 0.46 ± 0.03 | 0.39 ± 0.12 | 25.8 ± 1.0 | 55 ± 3 |
# | IPO | DPO family | 0.50 ± 0.02 | 1.01 ± 0.35 | 27.4 ± 1.5 | 53 ± 1 |
# | SimPO | DPO family | 0.51 ± 0.01 | 2.48 ± 0.52 | 30.1 ± 2.0 | 40 ± 2 |
# | KTO | DPO family | 0.47 ± 0.05 | 1.50 ± 1.11 | 26.6 ± 0.8 | 52 ± 15 |
# | ORPO | DPO family | 0.49 ± 0.07 | 1.59 ± 0.77 | 27.8 ± 2.4 | 18 ± 0 |
# | offline DPO (RM labels) | online vs offline | 0.46 ± 0.02 | 2.99 ± 0.49 | 31.4 ± 0.8 | 30 ± 2 |
# | online DPO (RM labels) | online vs offline | 0.36 ± 0.07 | 11.23 ± 6.21 | 34.6 ± 0.9 | 37 ± 6 |
# | GRPO (β = 0.04) | GRPO + verifiable reward | 0.43 ± 0.05 | 0.97 ± 0.05 | 24.2 ± 1.4 | 24 ± 1 |
# | GRPO, β = 0 | GRPO + verifiable reward | 0.39 ± 0.05 | 1.76 ± 0.96 | 24.1 ± 1.3 | 21 ± 1 |
# | Dr. GRPO | GRPO + verifiable reward | 0.41 ± 0.03 | 2.41 ± 1.78 | 24.6 ± 1.4 | 11 ± 1 |
# | DAPO | GRPO + verifiable reward | 0.40 ± 0.02 | 1.13 ± 0.19 | 23.3 ± 1.2 | 15 ± 1 |
#
# | method | group | verifier pass rate |
# |---|---|---:|
# | SFT (start) | start | 0.38 |
# | DPO | DPO family | 0.46 ± 0.04 |
# | IPO | DPO family | 0.46 ± 0.00 |
# | SimPO | DPO family | 0.47 ± 0.09 |
# | KTO | DPO family | 0.53 ± 0.09 |
# | ORPO | DPO family | 0.35 ± 0.02 |
# | offline DPO (RM labels) | online vs offline | 0.31 ± 0.12 |
# | online DPO (RM labels) | online vs offline | 0.11 ± 0.08 |
# | GRPO (β = 0.04) | GRPO + verifiable reward | 0.82 ± 0.04 |
# | GRPO, β = 0 | GRPO + verifiable reward | 0.80 ± 0.07 |
# | Dr. GRPO | GRPO + verifiable reward | 0.82 ± 0.13 |
# | DAPO | GRPO + verifiable reward | 0.82 ± 0.04 |
#
# Measured 2026-12-05 on the 2-core machine while other jobs ran (`--workers 2`, 617 s wall). Online DPO with the reward model as its labeller is the lab's lesson again: its second round is labelled by the same length-biased proxy on the policy's own answers, and it drifts (KL 11 ± 6 nats, longer answers) while the gold reward falls back to the SFT model's; offline DPO with the same labels and budget stays at KL 3.
#
# How to read it:
# - compare rows **within a group**: the DPO family trained on the toy world's human-style labels; online
#   and offline DPO on the reward model's labels; the GRPO variants on the verifiable reward only, so their
#   gold reward on the claim and harmful prompts they never trained on is not their fault;
# - a difference smaller than the spread is not a difference. Three seeds are the least that shows a
#   spread at all; papers that rank methods by one run each are ranking noise as often as not;
# - KL and length are part of the result: a gain bought with a long drift from the SFT model, or with
#   longer answers, is the over-optimisation of Section 1 in another form.
#
# ## Summary
#
# - **Reward over-optimisation** is measurable: the proxy rises, the gold reward peaks and falls (Gao et
#   al.: $d(\alpha - \beta d)$ for best-of-n, $d(\alpha - \beta \log d)$ for RL, $d = \sqrt{\mathrm{KL}}$). On
#   the toy world best-of-n only flattens by $n = 64$ (3.2 nats); PPO with a weak KL penalty, free to
#   move further, falls clearly.
# - **Remedies** address different failures: the KL penalty bounds the drift; an ensemble cancels its
#   members' independent errors but not a bias they share; a length penalty corrects a known bias.
# - **RLVR** replaces the reward model by a checker; the checker's holes become the policy's. GRPO's variants
#   are switches: `beta`, `loss_type`, `scale_rewards`, `epsilon_high`, dynamic sampling (ours), and the clip
#   acts only with more than one update per batch.
# - **The DPO family**: IPO bounds the gap, SimPO and ORPO drop the reference model, KTO drops the pairs.
# - **Compare methods with seeds and spread**, at the same budget, by a judge nobody optimised.
#
# This is the end of the course. From here: `rlhf-course overoptimization --out runs/lab` for the full lab,
# `python benchmarks/methods_table.py --out runs/methods` for the table, and the papers cited along the
# way.
