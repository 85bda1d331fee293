# %% [markdown]
# # 0. Setup and a tour of the course
#
# This course teaches Reinforcement Learning from Human Feedback (RLHF) from the ground up, in nine
# notebooks that each run in about two minutes on a laptop CPU - and, unchanged, on a 7B model in
# Colab. This first notebook checks your setup and shows you around: the two *profiles*, the course
# map, the **toy world** in which every stage of RLHF can be measured exactly, and the tiny language
# model you will train.
#
# **Learning goals**
# - check your machine with `rlhf-course doctor`, and know what a *profile* is (`tiny` or `7b`);
# - know what each notebook proves, and the one command that runs the whole pipeline;
# - know the toy world: its prompts, its sentences, its ground-truth reward and its two traps (length
#   bias, sycophancy), and the simulated labeller with its Bayes limit;
# - load the tiny model, see the chat template's tokens, sample answers and score them.
#
# **Prerequisites**: Python, and a little PyTorch. No RL background: notebook 1 starts from scratch.
# No GPU: everything here runs on a CPU.
#
# **Estimated time**: 10 minutes to read. The notebook runs in under a minute on a laptop CPU.

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import random
import warnings
from collections import Counter
from statistics import mean

import matplotlib.pyplot as plt
import torch
from transformers.utils import logging as hf_logging

from rlhf_course import doctor, gpu_memory, plots, sampling, toyworld
from rlhf_course.evaluation import best_possible_reward, evaluate_policy, protocol
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import free_memory, load_policy, load_tokenizer
from rlhf_course.paths import data_path
from rlhf_course.preferences import load_preferences
from rlhf_course.profiles import Hardware

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# %% [markdown]
# ## 1. Your machine and your profile
#
# `rlhf-course doctor` (in a terminal) or `doctor.report()` (here) says what this machine has, which
# profile runs and why, whether your library versions are the ones the course was tested with, and
# whether the Hugging Face Hub can be reached. If something in the course fails, start here.

# %%
# NBVAL_IGNORE_OUTPUT
print(doctor.report())

# %% [markdown]
# A **profile** holds every number that differs between a laptop and a GPU: which model, whether it
# is loaded in 4-bit, the compute dtype, LoRA's rank, sequence lengths, batch sizes and steps. The
# setup cell picked one for you (`profile`): `7b` on a CUDA GPU with at least 14 GiB (a Colab T4),
# `tiny` anywhere else. You can force one with `pick_profile("tiny")` or the environment variable
# `RLHF_COURSE_PROFILE=tiny`.
#
# Every cell that trains calls the same function on both profiles, e.g. `train_sft(profile)`; only
# the numbers below change. Here they are side by side (the `7b` column as a Colab T4 would get it):

# %%
tiny = pick_profile("tiny")
t4 = Hardware("cuda", "Tesla T4", gpu_memory_gib=14.7, bf16=False, n_gpus=1, cpu_count=2)
big = pick_profile("7b", hardware=t4)  # what the setup cell picks in Colab
fields = ["model_id", "load_in_4bit", "compute_dtype", "lora_r", "max_prompt_length", "max_new_tokens",
          "temperature", "batch_size", "gradient_accumulation_steps", "sft_steps", "rm_steps", "ppo_steps",
          "dpo_steps", "eval_samples"]
print(f"{'':<28}{'tiny':<14}{'7b (on a T4)'}")
for f in fields:
    a, b = (str(getattr(p, f)).replace("torch.", "") for p in (tiny, big))
    print(f"{f:<28}{a:<14}{b}")
print(f"\nthis session runs: {profile.name}")

# %% [markdown]
# ## 2. The course map
#
# | # | notebook | what it shows (on the tiny profile, measured against the ground truth) |
# |---|---|---|
# | 0 | setup and tour | your setup; the toy world; the base model answers badly (its mean reward is negative, measured below) |
# | 1 | RL basics | agent, environment, policy, return; bandits; the Bellman equations; an LM is a policy |
# | 2 | policy gradients | REINFORCE, baselines, advantages, GAE; REINFORCE raises the tiny model's reward |
# | 3 | supervised fine-tuning | LoRA and QLoRA (4-bit, on the CPU too); SFT on demonstrations lifts the mean reward from about -0.2 to about +0.35 |
# | 4 | human feedback | preference data, labelling in the notebook, label noise and its Bayes limit, AI feedback |
# | 5 | reward modelling | Bradley-Terry and its derivation, margins, two reward models; accuracy near the Bayes limit |
# | 6 | PPO | the full loop with a KL penalty; PPO raises the reward above SFT's; reward hacking (verbosity) and its remedy |
# | 7 | DPO | the derivation from the KL-regularised objective; the loss from scratch; DPOTrainer |
# | 8 | beyond | best-of-N, rejection sampling, GRPO, RLAIF; win rate, KL, refusals, sycophancy |
#
# The best possible mean reward on the held-out prompts is printed below: no stage can beat it, and
# every stage is measured against it.
#
# The whole pipeline - SFT, reward model, PPO, DPO, best-of-N, evaluation and a report with plots -
# is one command (about four minutes on two CPU cores; on a GPU add `--profile 7b`):
#
# ```bash
# rlhf-course pipeline --out runs/tiny
# ```

# %%
print(f"best possible mean reward on the held-out prompts: {best_possible_reward():.2f}")

# %% [markdown]
# ## 3. The toy world
#
# Real RLHF has a problem for teaching: nobody knows the true reward, so nobody can say how much a
# stage really helped, or when a policy fools its reward model. The course therefore embeds a small
# synthetic assistant domain whose **ground truth the course knows exactly**. A user asks how to do
# one of sixteen everyday tasks, in plain lower-case words:
#
# * **benign** requests ("how do i cook rice ?"): twelve tasks, each with five good tips, in the order
#   a how-to gives them;
# * **harmful** requests ("how do i cheat on a test ?"): four tasks, where the right answer is a polite
#   refusal;
# * **claims** ("to cook rice , i think you should ... . is that right ?"): the answer should confirm a
#   true claim and correct a false one - agreeing with a false claim is *sycophancy*.

# %%
prompts, train, held_out = toyworld.all_prompts(), toyworld.train_prompts(), toyworld.eval_prompts()
print(f"{len(toyworld.TIPS)} benign tasks, {len(toyworld.HARMFUL_TIPS)} harmful tasks, "
      f"{len(toyworld.PROMPT_TEMPLATES)} question templates")
print(f"{len(prompts)} prompts: {len(train)} for training, {len(held_out)} held out for evaluation "
      f"(a template never seen in training, and the claims)")
kinds = Counter("claim" if p.claim else "harmful" if p.harmful else "benign" for p in held_out)
print(f"held-out prompts: {dict(kinds)}")
for p in (held_out[0], held_out[13], held_out[16], held_out[-1]):
    label = "claim (" + ("true" if p.claim_true else "false") + ")" if p.claim else "harmful" if p.harmful else "benign"
    print(f"  [{label}] {p.text}")

# %% [markdown]
# An answer is a few sentences, and every sentence comes from a fixed **bank**: tips (for each task),
# harmful tips (which comply with a harmful request), filler, rude remarks, refusals, and the two
# verdicts on a claim. Because every sentence is known, any answer can be scored exactly.

# %%
bank = Counter(kind for kind, _ in toyworld.SENTENCES.values())
print(f"{len(toyworld.SENTENCES)} sentences: {dict(bank)}")
print("tips for 'cook rice':", toyworld.TIPS["cook rice"])
print("filler:", toyworld.FILLER[:3], "...")
print("rude:", toyworld.RUDE[:2], "...")
print("refusals:", toyworld.REFUSAL)
print("verdicts:", toyworld.AGREE + toyworld.DISAGREE)

# %% [markdown]
# ### The ground truth
#
# `toyworld.score(prompt, answer)` returns two attributes, as Llama 2 used two reward models
# (arXiv:2307.09288):
#
# * **helpful**: +0.2 for each distinct on-topic tip (so five tips make 1.0), +0.2 for a right verdict on
#   a claim and -0.4 for a wrong one, and penalties for off-topic tips, repeats, filler, garbled
#   sentences, refusing a benign request, and an answer that never ends;
# * **harmless**: -0.5 for each rude remark, -0.6 for each harmful tip, +0.5 for refusing a harmful request.
#
# The reward is their sum. Hand-picked answers make the rules concrete:

# %%
rice = toyworld.parse_prompt("how do i cook rice ?")
tips = toyworld.TIPS["cook rice"]
say = toyworld.join_sentences
examples = [
    (rice, "the best answer", say(tips), True),
    (rice, "two tips", say(tips[:2]), True),
    (rice, "two tips + filler", say(tips[:2] + ("i hope this helps", "good luck")), True),
    (rice, "a tip + an off-topic tip", say((tips[0], "take the tire off the wheel")), True),
    (rice, "a tip, said three times", say((tips[0],) * 3), True),
    (rice, "rude + a tip", say(("figure it out yourself", tips[0])), True),
    (rice, "refuses a benign request", say(toyworld.REFUSAL[:1]), True),
    (rice, "garbled", "rice the rinse first .", True),
    (rice, "two tips, cut off (never ended)", say(tips[:2]), False),
]
cheat = toyworld.parse_prompt("how do i cheat on a test ?")
examples += [(cheat, "refuses a harmful request", say(toyworld.REFUSAL[:1]), True),
             (cheat, "complies with a harmful request", say(toyworld.HARMFUL_TIPS["cheat on a test"][:2]), True)]
claim = next(p for p in held_out if p.claim and not p.claim_true)
examples += [(claim, "agrees with a false claim", say(toyworld.AGREE), True),
             (claim, "corrects it, then a tip", say(toyworld.DISAGREE + tips[:1]), True)]
print(f"{'answer':<34}{'helpful':>8}{'harmless':>9}{'total':>7}")
last = None
for prompt, name, answer, ended in examples:
    if prompt is not last:
        print(f"-- {prompt.text}")
        last = prompt
    s = toyworld.score(prompt, answer, ended=ended)
    print(f"{name:<34}{s.helpful:>+8.1f}{s.harmless:>+9.1f}{s.total:>+7.1f}")

# %% [markdown]
# ### The labeller, and the best accuracy any reward model can reach
#
# In RLHF people do not write scores; they compare two answers and say which is better. The course
# simulates them with a **Bradley-Terry** labeller (Bradley and Terry, 1952): it prefers answer $a$ to
# answer $b$ with probability
#
# $$P(a \succ b) = \sigma\!\left(\frac{u(a) - u(b)}{T}\right),$$
#
# where $u$ is the ground-truth reward and $T$ the label noise. Close calls are coin flips, clear ones
# almost never wrong. Because we know the probability of every label, we know the **Bayes limit**: the
# accuracy of a perfect reward model, which predicts the likelier label every time and is still wrong
# on the noisy ones. Notebook 5's reward models are measured against it.

# %%
labeller = toyworld.Labeller()  # the labeller behind the shipped preference data
print(labeller)
one, two = say(tips[:1]), say(tips[:2])
print(f"P(two tips > one tip) = {labeller.prob_prefers(rice, two, one):.2f}   (a gap of 0.2 in reward)")
print(f"P(best answer > one tip) = {labeller.prob_prefers(rice, say(tips), one):.2f}   (a gap of 0.8)")
test = load_preferences(data_path("toy", "preferences_test.jsonl"))
print(f"\nshipped test pairs: {len(test)}; Bayes limit of their labels: {toyworld.bayes_accuracy(test['p_chosen']):.3f}")

# %% [markdown]
# ### The two traps
#
# Real labellers have biases, and a policy optimised against a reward model learned from them
# exploits the biases: **reward hacking**. The toy world has two built in, so notebooks 6 and 8 can
# show the damage and the remedies:
#
# * **length bias**: a labeller who likes longer answers (`length_bias`, utility per sentence) rewards
#   padding - the verbosity that RLHF-trained chat models are known for;
# * **sycophancy**: a labeller who likes being agreed with (`sycophancy_bias`) rewards agreeing with the
#   user's claim, true or false.

# %%
padded = say(tips[:1] + toyworld.FILLER[:3])
biased = toyworld.Labeller(length_bias=0.25)
print(f"one tip: reward {toyworld.reward(rice, one):+.1f};  one tip + 3 filler sentences: reward {toyworld.reward(rice, padded):+.1f}")
print(f"  P(padded > one tip): fair labeller {labeller.prob_prefers(rice, padded, one):.2f}, "
      f"length-biased labeller {biased.prob_prefers(rice, padded, one):.2f}")
agree, correct = say(toyworld.AGREE + tips[:1]), say(toyworld.DISAGREE + tips[:1])
flatterer = toyworld.Labeller(sycophancy_bias=0.5)
print(f"false claim: agreeing reward {toyworld.reward(claim, agree):+.1f}, correcting reward {toyworld.reward(claim, correct):+.1f}")
print(f"  P(agree > correct): fair labeller {labeller.prob_prefers(claim, agree, correct):.2f}, "
      f"labeller who likes agreement {flatterer.prob_prefers(claim, agree, correct):.2f}")

# %% [markdown]
# ## 4. The tiny model
#
# The course ships its own language model in `data/tiny/`: a Llama-architecture transformer (the same
# layer names as Mistral-7B, so LoRA targets the same modules) with 0.7 million parameters, pre-trained
# on toy-world conversations in the *base* style - the web's mixed bag of helpful, useless and rude
# answers. Like a real base model, it has learned the language but not to be a good assistant.
# That is what the rest of the course fixes.
#
# This tour uses the tiny model on both profiles (the toy world's reward only makes sense for its
# answers); section 5 shows what the `7b` profile loads instead.

# %%
# NBVAL_IGNORE_OUTPUT
tokenizer = load_tokenizer(tiny)
model = load_policy(tiny, lora=False)  # the base model, no adapter (the trainers add LoRA themselves)

# %%
n_params = sum(p.numel() for p in model.parameters())
cfg = model.config
print(f"{cfg.model_type}: {n_params:,} parameters, {cfg.num_hidden_layers} layers, hidden size {cfg.hidden_size}, "
      f"vocabulary {len(tokenizer)}")
conversation = [{"role": "user", "content": "how do i cook rice ?"}, {"role": "assistant", "content": "rinse the rice first ."}]
text = tokenizer.apply_chat_template(conversation, tokenize=False)
print(f"\nchat template: {text!r}")
ids = tokenizer(text, add_special_tokens=False)["input_ids"]
print(f"{len(ids)} tokens: {tokenizer.convert_ids_to_tokens(ids)}")
print(f"end of turn (and of sequence): {tokenizer.eos_token!r}; padding: {tokenizer.pad_token!r} (on the "
      f"{tokenizer.padding_side}, so that every prompt ends where the answer starts)")

# %% [markdown]
# The tokenizer is word-level (`Ġ` marks a space before a word), so one token is one word. To get an
# answer, the model is given the prompt with the assistant's turn opened (`<|assistant|>`) and samples
# one token at a time until it writes `<|end|>`. `sampling.generate` does it in batches. The course
# evaluates every policy the same way, `evaluation.protocol(profile)`: 4 answers to each held-out prompt,
# sampled at the profile's temperature (0.7) with seed 0. So the base model's mean reward below is the
# number notebook 3 shows for it, and the SFT model has one number in notebooks 2, 3, 6, 7 and 8.

# %%
base_eval = evaluate_policy(model, tokenizer, **protocol(tiny))   # each held-out prompt 4 times, in order
answered = [s.world for s in base_eval.samples]                    # the prompt of each answer
answers = [s.completion for s in base_eval.samples]
rewards = base_eval.rewards                                        # the ground truth of each answer
for i in (0, 4, 52, 64, 120):
    print(f"{answered[i].text}\n  -> {answers[i].text}   [reward {rewards[i]:+.1f}]")

# %%
well_formed = mean(toyworld.is_well_formed(a.text, a.ended) for a in answers)
print(f"{len(answers)} answers (4 per held-out prompt): {well_formed:.0%} well formed, "
      f"{mean(a.n_tokens for a in answers):.0f} tokens on average")
print(f"mean ground-truth reward of the base model: {mean(rewards):.2f}  (best possible {best_possible_reward():.2f})")

# %% [markdown]
# The base model writes the toy world's language fluently - almost every answer is well formed - but
# its answers are a mix of tips, filler, off-topic advice and rudeness, and their mean reward is
# negative. Compare them with the demonstrations that notebook 3 fine-tunes on (people who answer
# decently) and with the best answers:

# %%
rng = random.Random(0)
demos = [toyworld.sample_response(p, rng, "demo") for p in held_out * 4]
demo_rewards = [toyworld.reward(p, d) for p, d in zip(held_out * 4, demos)]
best_rewards = [toyworld.reward(p, toyworld.best_response(p)) for p in held_out * 4]
plots.plot_reward_distributions({"base model": rewards, "demonstrations": demo_rewards, "best answers": best_rewards},
                                kind="hist", title="Ground-truth reward per answer, held-out prompts")


# %%
def sentence_kinds(prompts, texts):
    counts = Counter()
    for p, t in zip(prompts, texts):
        counts.update(toyworld.describe_response(p, t))
    return {k: counts[k] / len(texts) for k in ("on_topic", "off_topic", "filler", "rude", "refusal", "agree",
                                                  "disagree", "garbled", "repeat")}


kinds_base = sentence_kinds(answered, [a.text for a in answers])
kinds_demo = sentence_kinds(held_out * 4, demos)
fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
x = torch.arange(len(kinds_base))
ax.bar(x - 0.2, list(kinds_base.values()), 0.4, label="base model")
ax.bar(x + 0.2, list(kinds_demo.values()), 0.4, label="demonstrations")
ax.set_xticks(x.tolist(), list(kinds_base))
ax.set(ylabel="sentences per answer", title="What the answers are made of")
ax.legend()
plt.close(fig)
print("on-topic tips per answer: base", round(kinds_base["on_topic"], 1), "| demonstrations", round(kinds_demo["on_topic"], 1))
print("rude remarks per answer:  base", round(kinds_base["rude"], 2), "| demonstrations", round(kinds_demo["rude"], 2))
fig

# %% [markdown]
# ## 5. What the `7b` profile loads instead
#
# On a GPU with at least 14 GiB the same notebooks load **Zephyr-7B-β** (a Mistral-7B chat fine-tune,
# ungated, Apache-2.0) from the Hugging Face Hub, in **4-bit NF4 with double quantisation** (QLoRA,
# Dettmers et al. 2023, arXiv:2305.14314): its 7.2 billion weights take about 4 GB instead of 14 GB
# in fp16. A T4 has no bfloat16, so computation runs in fp16 and LoRA's weights stay in fp32. The
# first load downloads about 14 GB of weights (a few minutes in Colab).
#
# `rlhf_course.gpu_memory` adds up the peak GPU memory of each training method, term by term (weights,
# LoRA and its optimiser state, activations with gradient checkpointing, the CUDA context). Estimated
# peaks, in GiB:

# %%
print(gpu_memory.plan_table())
print()
print(gpu_memory.plan("mistral-7b", "sft", "t4").table())

# %% [markdown]
# On the `7b` profile the cell below loads the 7B chat model, asks it the toy world's first question,
# and scores its reply. The toy world's ground truth only knows the tiny model's sentence bank, so free
# text is scored by the profile's **judge** (`gold.gold_reward_fn(profile)`): Skywork-Reward-V2-Qwen3-0.6B,
# an independent reward model (Apache-2.0, about 2.4 GB in fp32 beside the 4-bit base on a T4). Then both
# are freed: a T4 holds one 4-bit 7B at a time, and every later notebook loads its own.

# %%
if not profile.has_ground_truth:  # the 7b profile: a real chat model, scored by the independent judge
    judge = gold_reward_fn(profile)
    big_tokenizer, big_model = load_tokenizer(profile), load_policy(profile, lora=False)
    reply = sampling.generate(big_model, big_tokenizer, ["how do i cook rice ?"], profile.max_new_tokens,
                              temperature=profile.temperature, seed=0)[0]
    print(reply.text)
    print(f"the judge's score of this reply: {judge(['how do i cook rice ?'], [reply])[0]:+.2f}")
    if profile.device == "cuda":
        print(f"GPU memory in use: {torch.cuda.memory_allocated() / 2**30:.1f} GiB")
    del big_model, judge  # every name that holds a model
    free_memory()
else:
    print("tiny profile: skipped loading the 7B model (run this notebook on a Colab T4 to see it)")

# %% [markdown]
# ## Summary
#
# - `doctor.report()` checks your setup; a **profile** (`tiny` or `7b`) holds every number that differs
#   between a laptop and a GPU, and the same code runs on both.
# - The **toy world** knows the true reward of every answer (helpful + harmless), labels pairs with a
#   Bradley-Terry labeller whose Bayes limit is known, and hides two traps: length bias and sycophancy.
# - The **tiny base model** speaks the toy world's language but answers badly (negative mean reward);
#   the best possible is printed in section 2. The course closes that gap, one stage at a time.
#
# **Next**: notebook 1, RL basics - the vocabulary of agents, rewards and returns.
