# %% [markdown]
# # 4. Human feedback: people (and models) choosing between two answers
#
# RLHF starts with a person who reads a prompt and two answers and says which one is better. In this
# notebook **you are that person**. You will also meet the data those choices become, see why labels
# are noisy, let a model do the labelling (RLAIF), and close the loop: the policy answers, someone
# labels the answers, the policy learns from the labels, and then it answers again.
#
# **Learning goals**
# - read and write preference data in TRL's formats (plain, conversational, with a `margin`), and
#   find the mistakes in a broken file;
# - label pairs in the notebook, in a way that a crash cannot undo;
# - explain label noise with the Bradley-Terry model, and the Bayes limit it puts on any reward model;
# - measure agreement between labellers: percent agreement, Cohen's and Fleiss' kappa;
# - use an AI judge (RLAIF, Constitutional AI), and decide whether to trust it by measuring its agreement;
# - run the iterative on-policy loop (sample, label, DPO, repeat), and merge a whole class's labels.
#
# **Prerequisites**: notebooks 0-3 (the toy world, policy gradients, SFT). No GPU is needed.
#
# **Estimated time**: 60-75 minutes to work through. The notebook runs in about 1-2 minutes on a
# laptop CPU (tiny profile).

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import json
import math
import random
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import datasets
from transformers.utils import logging as hf_logging

from rlhf_course import toyworld, trained_models
from rlhf_course.checks.nb04_human_feedback import (check_bradley_terry, check_cohen_kappa, check_labels_to_records,
                                                    check_majority)
from rlhf_course.evaluation import prompts_for
from rlhf_course.feedback import (CONSTITUTION, ConstitutionalJudge, GroundTruthJudge, LoopConfig, Pair,
                                  RewardModelJudge, compare_labels, critique, iterative_loop, judge_agreement,
                                  judge_prompt, label_pairs, labelling_widget, labels_to_preferences, make_judge,
                                  merge_labels, plot_rounds, read_labels, revise, sample_pairs, simulated_labeller)
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import free_memory, load_policy, load_tokenizer
from rlhf_course.paths import data_path
from rlhf_course.preferences import load_preferences, to_conversational, to_plain, validate_file, validate_records

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=DeprecationWarning)
datasets.disable_progress_bars()
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
WORK = Path(tempfile.mkdtemp(prefix="rlhf-course-04-"))  # scratch files of this notebook

# %% [markdown]
# ## 1. What a preference looks like
#
# A preference record holds a **prompt**, the answer the labeller **chose**, and the answer they
# **rejected**. TRL's trainers (and ours) read two formats:
#
# * **plain**: three strings, `{"prompt": "...", "chosen": "...", "rejected": "..."}`;
# * **conversational**: message lists, `{"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", ...}], ...}`.
#   The chat template turns these into tokens, so the model sees the same format it was tuned on.
#
# An optional **`margin`** says *how much* better the chosen answer is. Llama 2 collected labels on
# a four-point scale and turned them into a margin in the reward model's loss (arXiv:2307.09288, Eq. 2):
#
# $$\mathcal{L} = -\log \sigma\big(r(x, y_c) - r(x, y_r) - m(r)\big)$$
#
# A clear win should open a wider gap between the two rewards than a narrow one. The course's
# hand-written set is plain text about everyday topics, and 44 of its 128 pairs carry a margin:

# %%
handwritten = load_preferences(data_path("handwritten", "preferences.jsonl"))
print(f"{len(handwritten)} hand-written pairs; columns: {handwritten.column_names}")
row = handwritten[1]
for field in ("prompt", "chosen", "rejected", "kind", "why", "margin"):
    print(f"{field:>9}: {row[field]}")
margins = Counter(m for m in handwritten["margin"] if m is not None)
print(f"\nmargins: {dict(sorted(margins.items()))} (1 = slightly better ... 3 = much better); the rest have none")

# %% [markdown]
# The toy world's 4,000 training pairs are **conversational**. Their labels were drawn by a simulated
# labeller (section 4 explains how), and each row keeps `p_chosen`, the probability that this
# labeller picks the answer it picked. We use that probability later to find the best accuracy any
# reward model could reach.

# %%
toy = load_preferences(data_path("toy", "preferences_train.jsonl"))
print(f"{len(toy)} toy pairs; columns: {toy.column_names}")
print(json.dumps(toy[0], indent=1))

# %% [markdown]
# Converting between the formats is mechanical. `to_conversational` wraps the texts in messages.
# `to_plain` joins the messages; given a tokenizer, it renders the prompt through the chat template
# instead.

# %%
print(to_conversational({"prompt": "how do i cook rice ?", "chosen": "rinse the rice first .", "rejected": "good luck ."}))
print(to_plain(toy[0])["prompt"], "->", to_plain(toy[0])["chosen"])

# %% [markdown]
# ## 2. Checking preference data before training on it
#
# A broken record rarely crashes a trainer. An empty answer, two identical answers, or a margin
# typed as text usually gets tokenised and trained on, and the damage only shows up later, in
# the reward. `rlhf_course.preferences` checks every record and reports **every** problem at
# once, one line each, as `FILE:LINE: field: problem`, so you can fix a file in one pass. Here is
# a file with deliberate mistakes:

# %%
bad = [
    {"prompt": "how do i cook rice ?", "chosen": "rinse the rice first .", "rejected": "good luck ."},  # fine
    {"prompt": "how do i cook rice ?", "chosen": "", "rejected": "good luck ."},
    {"prompt": "how do i bake bread ?", "chosen": "bake the bread in a hot oven .", "rejected": "bake the bread in a hot oven ."},
    {"prompt": "any tips to save money ?", "chosen": "set a money budget each month .", "rejected": "good luck .", "margin": "big"},
    {"prompt": [{"role": "user", "content": "how do i sleep better ?"}], "chosen": "good luck .", "rejected": "no ."},
    {"prompt": "how do i grow tomatoes ?", "chosen": "plant the tomatoes in full sun ."},
]
path = WORK / "bad_preferences.jsonl"
path.write_text("\n".join(json.dumps(r) for r in bad) + "\n{oops, this line is not json\n")
for problem in validate_file(path).problems:
    print(f"{path.name}:{problem.line}: {problem.field}: {problem.message}")

# %% [markdown]
# The same lines (with the full path) come from the command line: `rlhf-course validate-data
# bad_preferences.jsonl`. `load_preferences` raises them all at once instead of returning a partial
# dataset. Line 5 is reported because line 1, the first valid record, set the file's format to plain.

# %% [markdown]
# ## 3. Be the labeller
#
# InstructGPT's labellers saw a prompt and several answers from the *current* model and ranked
# them (arXiv:2203.02155, Sec. 3.4). Anthropic's HH data came from crowdworkers who chose the
# better of two answers in a chat interface (arXiv:2204.05862). We do the same with pairs sampled
# from our current policy: the SFT model of notebook 3, loaded from the course's checkpoints. Each
# prompt gets two answers, sampled at the profile's temperature and shown in a random order, so
# that position says nothing about where an answer came from. Prompts whose two answers are
# identical are left out. (On the `7b` profile the pairs are the 7B chat model's answers to the toy
# world's questions. The widget works the same; the simulated student below, a toy-world labeller,
# only knows the tiny model's sentences, so its labels of a 7B's answers are coin flips: label them
# yourself.)

# %%
tokenizer = load_tokenizer(profile)
sft_path = trained_models.sft_model(profile)  # the SFT model of notebook 3 (built once if it is missing)
policy = load_policy(profile, lora=False, model_id=sft_path, verbose=False)
prompts = random.Random(0).sample(toyworld.train_prompts(), 24)
pairs = sample_pairs(policy, tokenizer, prompts, max_new_tokens=profile.max_new_tokens,
                     temperature=profile.temperature, seed=0)
print(f"{len(pairs)} pairs to label, e.g.\n  prompt: {pairs[0].prompt}\n  A: {pairs[0].answer_a}\n  B: {pairs[0].answer_b}")

# %% [markdown]
# The widget below shows one pair at a time. Click **A is better**, **B is better**, **tie** or
# **skip**. Tick **much better** before clicking when the winner is clearly better; that tick
# becomes a margin. **undo** takes back your last click.
#
# Every click is written to the label file **before** the next pair appears: the line is appended,
# flushed and `fsync`ed. If the kernel crashes, nothing is lost. Run the cell again and the widget
# resumes where you stopped, and it never asks the same pair twice. `docs/labels.md` describes the
# file format.
#
# **To label yourself**, set `SIMULATE = False` and run the cell. Your labels go to
# `my_labels.jsonl` next to the notebook. With `SIMULATE = True`, which is how this notebook is
# stored and tested, a simulated student clicks the buttons for you, writing to a scratch file.

# %%
# NBVAL_IGNORE_OUTPUT
SIMULATE = True  # False: label the pairs yourself
LABEL_FILE = WORK / "simulated_student.jsonl" if SIMULATE else Path("my_labels.jsonl")
LABELLER = "simulated-student" if SIMULATE else None  # None: a random id, kept in the file
widget = labelling_widget(pairs, LABEL_FILE, labeller=LABELLER)
widget

# %% [markdown]
# The simulated student is a Bradley-Terry labeller from the toy world. Section 4 explains it. It
# labels 10 pairs, and then "the kernel crashes": we throw the widget away and open a new one on
# the same file.

# %%
student = simulated_labeller(toyworld.Labeller(temperature=0.1), seed=0)
if SIMULATE:
    widget.autolabel(student, limit=10)  # presses the widget's buttons, as you would
print(widget.session.status().split(" (")[0])
del widget  # the kernel crashed...

# %%
# NBVAL_IGNORE_OUTPUT
widget = labelling_widget(pairs, LABEL_FILE, labeller=LABELLER)  # ...and came back: the file is replayed
widget

# %%
print(f"resumed with {widget.session.resumed} labels already in the file")
if SIMULATE:
    widget.autolabel(student)
    undone = widget.undo()  # a second thought about the last pair
    print(f"undo: took back {undone.decision!r}; the same pair is asked again: {widget.session.current == undone.pair}")
    widget.autolabel(student)
print(widget.session.status().split(" (")[0])
print("the log's last lines:", [json.loads(line)["type"] for line in LABEL_FILE.read_text().splitlines()][-3:])

# %% [markdown]
# Each line of the file is one decision. The pair's id is a hash of the prompt and the two answers
# **in sorted order**, so it is the same whichever answer was shown as A. That is how a resumed
# session recognises a pair, and how labels from several people are matched later. An undo is a
# new line, never an edit: the file is only ever appended to.

# %%
record = json.loads(LABEL_FILE.read_text().splitlines()[0])
record["time"] = "(when it was clicked)"
print(json.dumps(record, indent=1))
labels = read_labels(LABEL_FILE).labels  # the file replayed: the labels that stand
print("decisions:", dict(Counter(label.decision for label in labels)),
      "| much better:", sum(label.much_better for label in labels))


# %% [markdown]
# ### Exercise 4.1 — From labels to preference records
# *Difficulty ●●○ · importance: high (this is the data every later notebook trains on) · about 10 minutes ·
# checked against `rlhf_course.feedback.labels_to_preferences` on labels with every kind of decision.*
#
# Turn labels into conversational preference records. Each `a` or `b` label becomes one record:
# `prompt` is a user message, and `chosen` and `rejected` are assistant messages. Ties and skips
# are dropped, because they do not say which answer is better. `margin` is `much_better_margin` for
# a "much better" label and `0.0` otherwise. A label has the fields `prompt`, `answer_a`,
# `answer_b` (as shown), `decision` and `much_better`. (The package's version,
# `feedback.labels_to_preferences`, also keeps each pair's id.)
#
# **Mistakes the check names**: ties and skips kept; chosen and rejected swapped; a "b" label that keeps
# answer A as chosen; plain strings instead of messages; a missing field; a wrong margin (one value for
# every label, or a margin where the label is not "much better"); the `labels` list changed in place.
#
# <details><summary>Hint 2 (one record)</summary>
#
# For a label with `decision == "b"`: `{"prompt": [{"role": "user", "content": label.prompt}],
# "chosen": [{"role": "assistant", "content": label.answer_b}], "rejected": [{"role": "assistant",
# "content": label.answer_a}], "margin": much_better_margin if label.much_better else 0.0}`.
#
# </details>

# %%
def labels_to_records(labels, much_better_margin=1.0):
    """Conversational preference records (prompt / chosen / rejected / margin) from "a"/"b" labels."""
    records = []
    # SOLUTION
    # STUB pass
    # HINT the decision says which answer is chosen; a tie or a skip says nothing about which is better
    for label in labels:
        if label.decision not in ("a", "b"):
            continue
        chosen, rejected = ((label.answer_a, label.answer_b) if label.decision == "a"
                            else (label.answer_b, label.answer_a))
        records.append({
            "prompt": [{"role": "user", "content": label.prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "margin": much_better_margin if label.much_better else 0.0,
        })
    # END SOLUTION
    return records


# %%
labels_to_records = check_labels_to_records(labels_to_records)

# %%
records = labels_to_preferences(labels)  # the package's version (it also keeps each pair's id)
print(f"{len(records)} preference records from {len(labels)} labels; valid: {validate_records(records).ok}")


# %% [markdown]
# ## 4. Why labels are noisy: the Bradley-Terry labeller and the Bayes limit
#
# People disagree with each other, and with themselves on a second look. The standard model of a
# noisy choice is **Bradley-Terry** (1952). Each answer $y$ has a utility $u(y)$, and a labeller
# prefers $y_a$ to $y_b$ with probability
#
# $$P(y_a \succ y_b) = \sigma\!\left(\frac{u(y_a) - u(y_b)}{T}\right),$$
#
# where $\sigma$ is the logistic function and $T$ is the labeller's noise. As $T \to 0$ the labeller
# always picks the better answer; a large $T$ is a coin flip. A reward model is *this* model with a
# learned $r(x, y)$ in place of $u$ (notebook 5). The toy world's labeller uses the ground-truth
# reward as $u$, plus optional biases.

# %% [markdown]
# ### Exercise 4.2 — The Bradley-Terry probability
# *Difficulty ●○○ · importance: high (the same formula is the reward model's loss and DPO's) · about 5 minutes ·
# checked against the formula for six temperatures, at a gap of 3000 temperatures (section 4 uses a
# labeller with T = 0.001), and against `toyworld.Labeller` on a real pair. The package's version is
# `rlhf_course.feedback.bradley_terry`.*
#
# **Mistakes the check names**: the sign reversed; the temperature missing; the gap multiplied by the
# temperature instead of divided; `math.exp` overflowing at a huge gap; one temperature only.
#
# <details><summary>Hint 2 (the formula, without overflow)</summary>
#
# `z = (u_a - u_b) / temperature`, and $\sigma(z) = 1 / (1 + e^{-z})$. For a very negative `z`, `math.exp(-z)`
# overflows: there use the same value written as `math.exp(z) / (1 + math.exp(z))`.
#
# </details>

# %%
def bradley_terry(u_a: float, u_b: float, temperature: float) -> float:
    """P(a labeller prefers answer a to answer b) under Bradley-Terry with noise `temperature`."""
    # SOLUTION
    # STUB return 0.5
    # HINT measure the utility gap in units of the temperature, then squash it into a probability
    z = (u_a - u_b) / temperature
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    return math.exp(z) / (1 + math.exp(z))   # exp(-z) would overflow for a very negative z
    # END SOLUTION


# %%
bradley_terry = check_bradley_terry(bradley_terry)

# %% [markdown]
# Because each label is a random draw, even a perfect reward model cannot predict every label. The
# best it can do is predict the more likely answer, which is right with probability
# $\max(p, 1-p)$ on each pair. The mean of that over a dataset is its **Bayes limit**: the highest
# accuracy any reward model can reach on those labels (`toyworld.bayes_accuracy`). Noisier
# labellers give a lower limit:

# %%
print(f"the shipped training pairs (T = {toyworld.Labeller().temperature}): "
      f"Bayes limit {toyworld.bayes_accuracy(toy['p_chosen']):.2f}")
for temperature in (0.05, 0.1, 0.2, 0.5, 1.0):
    rows = toyworld.make_preference_pairs(1000, seed=0, labeller=toyworld.Labeller(temperature=temperature))
    print(f"labeller temperature {temperature:<4}: Bayes limit {toyworld.bayes_accuracy(r['p_chosen'] for r in rows):.2f}")

# %% [markdown]
# Noise is not the only problem. Labellers also differ **systematically**: one likes long answers,
# another likes being agreed with. Such a bias does not average out over more labels; a reward model
# learns it, and a policy optimised against that model exploits it (notebooks 6 and 8). Here three
# simulated labellers judge the same 300 pairs, and we compare each one with the ground truth's own
# verdicts:

# %%
test_rows = load_preferences(data_path("toy", "preferences_test.jsonl")).select(range(300))
toy_pairs = [Pair(toyworld.prompt_text(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"])
             for r in test_rows]
truth = GroundTruthJudge(toyworld.Labeller(temperature=1e-3)).label(toy_pairs, tie_band=0.01, labeller_id="truth")
labellers = {
    "careful (T = 0.1)": toyworld.Labeller(temperature=0.1),
    "likes long answers": toyworld.Labeller(temperature=0.1, length_bias=0.25),
    "likes being agreed with": toyworld.Labeller(temperature=0.1, sycophancy_bias=0.5),
}
crowd = {}
for i, (name, labeller) in enumerate(labellers.items()):
    crowd[name] = label_pairs(toy_pairs, WORK / f"crowd_{i}.jsonl", simulated_labeller(labeller, seed=i),
                              labeller_id=name).labels
    agreement = compare_labels(truth, crowd[name])
    print(f"{name:<24} agrees with the ground truth on {agreement.percent:.0f}% of pairs "
          f"(Cohen's kappa {agreement.cohen_kappa:.2f})")


# %% [markdown]
# ## 5. How much do labellers agree? Cohen's kappa
#
# Raw agreement flatters. Two labellers who both answer "A" 90% of the time agree on about 82% of
# pairs by pure chance. **Cohen's kappa** (1960) corrects for that:
#
# $$\kappa = \frac{p_o - p_e}{1 - p_e}, \qquad p_e = \sum_{k} p_1(k)\, p_2(k),$$
#
# where $p_o$ is the observed agreement and $p_e$ is the agreement expected if each rater labelled at
# random at their own rates $p_1(k)$, $p_2(k)$ for each label $k$. $\kappa = 1$ is perfect agreement,
# $0$ is chance level, and a negative value is worse than chance. For more than two raters,
# **Fleiss' kappa** (1971) averages the agreement over all pairs of raters on each item.

# %% [markdown]
# ### Exercise 4.3 — Cohen's kappa
# *Difficulty ●●○ · importance: medium (you will report it for every judge and every class) · about 10 minutes ·
# checked on Wikipedia's example (kappa 0.4) and against `rlhf_course.feedback.cohen_kappa` on random ratings.*
#
# When both raters always gave the same single label, $p_e = 1$ and kappa is $0 / 0$: return `math.nan`.
#
# **Mistakes the check names**: the observed agreement $p_o$ returned as kappa; chance agreement taken as
# 1 / (number of labels) instead of each rater's own rates; a division by zero when kappa is undefined.
#
# <details><summary>Hint 2 (the two agreements)</summary>
#
# `p_o = sum(a == b for a, b in zip(ratings_1, ratings_2)) / n`; with `count_1, count_2 = Counter(ratings_1),
# Counter(ratings_2)`, `p_e = sum(count_1[k] * count_2[k] for k in count_1) / n**2`. Then
# `(p_o - p_e) / (1 - p_e)`, or `math.nan` when `p_e == 1`.
#
# </details>

# %%
def cohen_kappa(ratings_1: list, ratings_2: list) -> float:
    """Cohen's kappa of two raters who labelled the same items, in the same order."""
    assert len(ratings_1) == len(ratings_2) > 0, "two lists of ratings of the same items"
    n = len(ratings_1)
    # SOLUTION
    # STUB return 0.0
    # HINT Counter(ratings_1)[k] / n is rater 1's rate of label k
    p_o = sum(a == b for a, b in zip(ratings_1, ratings_2)) / n
    count_1, count_2 = Counter(ratings_1), Counter(ratings_2)
    p_e = sum(count_1[k] * count_2[k] for k in count_1) / n**2
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan
    # END SOLUTION


# %%
cohen_kappa = check_cohen_kappa(cohen_kappa)

# %%
careful, long_fan = crowd["careful (T = 0.1)"], crowd["likes long answers"]
agreement = compare_labels(careful, long_fan)
print(f"careful vs likes-long-answers: {agreement.percent:.0f}% agreement, Cohen's kappa {agreement.cohen_kappa:.2f}")

# %% [markdown]
# **Question.** InstructGPT reports that its labellers agreed with each other on about 73% of
# comparisons (arXiv:2203.02155, Sec. 5.1). What does that mean for the best accuracy a reward model
# trained on their labels can reach on held-out labels from *other* labellers?
#
# <!-- SOLUTION -->
# If two labellers agree on only ~73% of pairs, the labels themselves are that noisy. A reward model
# that predicted one labeller perfectly would still "miss" about 27% of another labeller's choices.
# So held-out accuracy near 70-75% can already be close to the ceiling. This is the same Bayes-limit
# argument as above, with labeller disagreement standing in for the temperature. InstructGPT's
# reward models indeed reached about 72% accuracy on held-out labellers.
# <!-- END SOLUTION -->

# %% [markdown]
# ## 6. AI feedback: RLAIF and Constitutional AI
#
# People are slow and expensive, and a model can label thousands of pairs an hour. **Constitutional
# AI** (Bai et al. 2022, arXiv:2212.08073) asks a model which of two answers better follows a short
# list of written principles, the *constitution*. The normalised probabilities of its answers "A" and
# "B" are then used as soft labels. **RLAIF** (Lee et al. 2023, arXiv:2309.00267) found that such
# labels train a policy about as well as human ones. A judge must be **measured** before it is
# trusted, though: label the same pairs by people and by the judge, and report the agreement and
# kappa.
#
# The course's constitution:

# %%
print(CONSTITUTION)

# %% [markdown]
# On the 7b profile, the chat model itself is the judge (`ConstitutionalJudge`). It reads the
# question below and compares its log-probabilities of answering "A" and "B". LLM judges favour one
# position, so each pair is asked twice, with A and B swapped, and the two results are averaged. This
# makes `judge(A, B) = 1 - judge(B, A)` exactly and cancels a pure position bias (RLAIF, Sec. 2.1.1).
#
# The tiny model cannot read, so on the tiny profile the constitution is applied by rules
# (`feedback.critique`): each principle is a critic that reads an answer sentence by sentence and
# objects, in one line, to what breaks it. What a 7B knows from pretraining - which sentence is a step
# for which task, which is rude or filler, which requests are harmful, which claims are wrong - the
# critics look up in the toy world's sentence bank. What they do not know is the ground truth's
# weights: how much a step is worth against a filler sentence is not in the constitution.

# %%
print(judge_prompt(pairs[0]))

# %% [markdown]
# **Critique and revise.** Constitutional AI's first, supervised stage has the model criticise its own
# answer against a principle and then revise it; the revisions become fine-tuning data (Bai et al. 2022,
# Sec. 3.1). Here is that step on the SFT model's answers from section 3: the critiques of one answer,
# its revision (at tiny scale the reviser can only cut what the critiques name, or refuse a harmful
# request; a 7B rewrites), and what revising every answer does to the ground-truth reward.

# %%
# NBVAL_IGNORE_OUTPUT
answers = [(p.prompt, a) for p in pairs for a in (p.answer_a, p.answer_b)]   # the SFT model's answers
if profile.has_ground_truth:  # the critics read the toy world's sentences
    prompt, answer = max(answers, key=lambda pa: len({c.principle for c in critique(*pa)}))
    print(f"{prompt}\n  answer:   {answer}")
    for c in critique(prompt, answer):
        print(f"  critique ({c.principle}): " + (f"{c.sentence!r} {c.why}" if c.sentence else f"the answer {c.why}"))
    print(f"  revision: {revise(prompt, answer)}")
    revised = [(p, revise(p, a)) for p, a in answers]
    before = sum(toyworld.reward(p, a) for p, a in answers) / len(answers)
    after = sum(toyworld.reward(p, a) for p, a in revised) / len(answers)
    print(f"\n{sum(r != a for (_, r), (_, a) in zip(revised, answers))} of the {len(answers)} answers revised; "
          f"mean ground-truth reward {before:.2f} -> {after:.2f}")
else:
    print("the 7b profile's critiques and revisions are the chat model's own text (see below)")

# %%
if profile.has_ground_truth:
    print(f"critique and revision raised the ground-truth reward of the SFT model's answers: {after > before}")

# %% [markdown]
# **The judge.** Between two answers, the tiny profile's judge (`PrincipleJudge`) prefers the one with
# more steps for the asked task and fewer critiques, P(A better) = sigmoid(score difference / 0.5); on
# the 7b profile it is the chat model reading the question above. Either way, measure it before trusting
# it: the same pairs labelled by the ground truth, by the judge, and by a noisy person.

# %%
# NBVAL_IGNORE_OUTPUT
judge = make_judge(profile, model=policy, tokenizer=tokenizer)  # tiny: the constitution's critics; 7b: the chat model
print(f"judge: {type(judge).__name__}")

# %%
judges = {"the AI judge": judge, "a noisy person (T = 0.3)": GroundTruthJudge(toyworld.Labeller(temperature=0.3))}
for name, j in judges.items():
    on_truth = judge_agreement(j, truth, sample=isinstance(j, GroundTruthJudge))
    on_student = judge_agreement(j, labels, sample=isinstance(j, GroundTruthJudge))
    print(f"{name:<25} vs the ground truth: {on_truth.percent:.0f}% (kappa {on_truth.cohen_kappa:.2f}) | "
          f"vs the simulated student on {on_student.n_items} pairs: {on_student.percent:.0f}% (kappa {on_student.cohen_kappa:.2f})")

# %% [markdown]
# The constitution's judge agrees with the ground truth more often than a noisy person does, yet not
# always: where the principles are silent (is one more step worth a filler sentence?), it decides by
# its own count, and a policy trained on its labels will find those blind spots. This is the reward
# hacking of notebook 6, now with an AI labeller. Measure a judge on fresh, on-policy data too (the
# student's pairs), not only on a fixed test set.
#
# **What the 7B does differently.** It *reads* the constitution: its verdict is its own probability of
# answering "A" or "B" to the question printed above, averaged over both orders; its critiques and
# revisions would be text it writes (Bai et al. prompt "Identify specific ways in which the assistant's
# last response is harmful..." and then "Please rewrite the assistant response..."), so a revision can
# add what was missing, not only cut. Its knowledge of the world and its biases (length, position, its own
# style) come from pretraining; the tiny critics' come from the toy world's sentence bank, and have none of
# those biases. On the 7b profile the cell below puts the constitution to work on real answers.

# %%
if isinstance(judge, ConstitutionalJudge):  # a chat model that can read the constitution (the 7b profile)
    verdicts = judge(pairs[:8])  # P(answer A is better), position-debiased
    for pair, p in zip(pairs[:8], verdicts):
        print(f"P(A better) = {p:.2f} | A: {pair.answer_a[:60]!r} | B: {pair.answer_b[:60]!r}")
else:
    print("skipped on the tiny profile: the tiny model cannot read a constitution (the 7b profile runs this cell)")

# %% [markdown]
# ## 7. The iterative on-policy loop
#
# Labels go stale. Pairs sampled from the SFT model tell us about the SFT model's mistakes, but after
# training the policy makes *different* mistakes. So RLHF in practice collects labels in rounds, each
# time on the latest model's answers: Anthropic's "iterated online RLHF" (arXiv:2204.05862, Sec. 4.5),
# Llama 2's weekly batches (arXiv:2307.09288), iterative DPO (arXiv:2312.11456), and Self-Rewarding
# LMs, where the policy is also its own judge (arXiv:2401.10020). Each round:
#
# 1. sample two answers per prompt from the **current** policy;
# 2. label them: a person in the widget, or the judge;
# 3. train with DPO from the current policy, which is also that round's reference;
# 4. measure the ground-truth reward on held-out prompts.
#
# > **A black box for now: DPO.** Step 3 trains with *Direct Preference Optimization*, which notebook 7
# > derives and builds layer by layer. Until then, read it as "make the answer the labeller chose more
# > likely than the other one, relative to where the policy started, without drifting far from it". It
# > needs no reward model, which is why it suits a loop that relabels every round.
#
# Here the noisy ground-truth labeller (a stand-in for a careful class) does the labelling: two rounds of
# 256 prompts and 20 DPO steps each. Every round's labels are written to a label file, just like yours.
#
# On the `7b` profile the toy world's labeller has nothing to say about free text, so the profile's
# independent judge (`gold.gold_reward_fn`, a 0.6B reward model) labels the pairs, as a reward-model
# judge does (`RewardModelJudge`: P(A) = sigmoid(r_A - r_B)), and scores each round on held-out real
# prompts: two rounds of 64 prompts and `profile.dpo_steps // 2` DPO steps (memory: the DPO plan's 9.6 GiB
# plus the judge's 2.4 GB, `rlhf-course memory --method dpo`), an estimated 30-60 minutes on
# a T4 (not measured). The chat model and its constitutional judge are freed first: the loop loads its own
# 4-bit model, one at a time.

# %%
# NBVAL_IGNORE_OUTPUT
if profile.one_base_at_a_time:  # a T4 holds one 4-bit 7B: the chat model (and the judges built on it) go first
    del policy, judge, judges
    free_memory()
if profile.has_ground_truth:
    people = GroundTruthJudge(toyworld.Labeller(temperature=0.3))
    config = LoopConfig(rounds=2, prompts_per_round=256, dpo_steps=20)
    scorer = None  # each round is measured against the toy world's ground truth
else:
    scorer = gold_reward_fn(profile)  # the independent judge scores each round, and labels the pairs
    people = RewardModelJudge(scorer.model, scorer.tokenizer, batch_size=scorer.batch_size)
    config = LoopConfig(rounds=2, prompts_per_round=64, dpo_steps=max(1, profile.dpo_steps // 2), eval_n_per_prompt=1)
loop = iterative_loop(profile, people, model_id=sft_path, prompts=prompts_for(profile, "train"),
                      eval_prompts=prompts_for(profile, "eval"), config=config, work_dir=WORK / "loop", judge=scorer,
                      progress=True)

# %%
print(f"the {'ground-truth' if profile.has_ground_truth else 'judged'} reward rose over the rounds:",
      loop.rewards[-1] > loop.rewards[0])
print("each round's labels are a label file:", sorted(p.name for p in (WORK / "loop").glob("labels_round*.jsonl")))

# %%
plot_rounds(loop, best=None if profile.has_ground_truth else math.nan)  # a judge's rewards have no known best

# %% [markdown]
# Two short rounds move the SFT model's reward from about 0.35 to about 0.49. In one measured run,
# at 20 DPO steps per round, the reward went 0.35 → 0.49 → 0.49, and a third round *lost* ground
# (0.45): the answers began to fray, with the well-formed share falling from 0.99 to 0.86. More
# prompts per round, fresh labels and a gentler learning rate push further. For comparison, PPO
# against the ground truth for 100 iterations reaches about 0.66 from a weaker start (notebook 6).
#
# **Try it**: pass `judge` (the constitution) instead of `people`, or a reward model as the labeller,
# `feedback.RewardModelJudge(reward_model, tokenizer)` with the reward model notebook 5 trains
# (`reward_model.load_trained_reward_model(profile, trained_models.reward_model_dir(profile))`). In the
# measured run with that reward model as the labeller, the first round helped just as much (0.35 → 0.49).
# Then the reward fell: 0.38 after round 2 and 0.21 after round 3, even though DPO fit the judge's labels
# with over 90% accuracy. The policy learned the judge's mistakes, not the task. RLAIF has to guard
# against this, which is why judges are measured on on-policy data.

# %% [markdown]
# ## 8. A class's labels
#
# In a workshop every student labels pairs, and the class's files become one dataset. Each pair is
# resolved by **majority vote** on the answers' text, so two students who saw A and B swapped still
# count as agreeing. Ties and skips are not votes, an even split is dropped, and the vote counts are
# kept in each record. A malformed file is reported line by line and left out, never merged half-read.
#
# Below, five simulated students each label 60 of 100 pairs, each in their own random order. One
# labeller is noisier, and one likes long answers. A sixth student copied a classmate's file and edited
# one line by hand.

# %%
class_dir = WORK / "class"
class_pairs = toy_pairs[:100]
students = {"ana": toyworld.Labeller(temperature=0.1), "ben": toyworld.Labeller(temperature=0.1),
            "chloe": toyworld.Labeller(temperature=0.3), "dev": toyworld.Labeller(temperature=0.1, length_bias=0.25),
            "eve": toyworld.Labeller(temperature=0.1)}
rng = random.Random(0)
for i, (name, labeller) in enumerate(students.items()):
    mine = [Pair(p.prompt, p.answer_b, p.answer_a) if rng.random() < 0.5 else p for p in rng.sample(class_pairs, 60)]
    label_pairs(mine, class_dir / f"{name}.jsonl", simulated_labeller(labeller, seed=i), labeller_id=name)
hand_edited = json.loads((class_dir / "ana.jsonl").read_text().splitlines()[0]) | {"decision": "A"}  # not a/b/tie/skip
(class_dir / "zoe.jsonl").write_text((class_dir / "ana.jsonl").read_text() + json.dumps(hand_edited) + "\n")
result = merge_labels([class_dir])
for file, problems in result.skipped.items():
    for problem in problems:
        print(f"{Path(problem.file).name}:{problem.line}: {problem.field}: {problem.message}")
print(result.summary())


# %% [markdown]
# ### Exercise 4.4 — Majority vote
# *Difficulty ●○○ · importance: medium · about 5 minutes · checked on hand-made votes (ties, even splits,
# no votes) and against `rlhf_course.feedback.majority` on random votes.*
#
# Given the answers the voters chose (one entry per vote), return the answer with the most votes. When
# the top two tie, return `None`: an even split teaches nothing.
#
# **Mistakes the check names**: the first of two tied answers returned instead of `None`; no votes not
# giving `None`; the `votes` list changed in place (sorted, say).
#
# <details><summary>Hint 2 (the tie test)</summary>
#
# `ranked = Counter(votes).most_common()`; return `None` if `ranked` is empty or
# `ranked[0][1] == ranked[1][1]` (when there are two), else `ranked[0][0]`.
#
# </details>

# %%
def majority(votes: list[str]) -> str | None:
    """The answer with the most votes; None when there are no votes or the top two tie."""
    # SOLUTION
    # STUB return votes[0] if votes else None
    # HINT Counter(votes).most_common() lists (answer, count) pairs, the most common first
    ranked = Counter(votes).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]
    # END SOLUTION


# %%
majority = check_majority(majority)

# %% [markdown]
# The same merge runs from the command line. It prints the summary, writes a conversational
# preference file that passes `rlhf-course validate-data`, and exits with status 1 because one file
# was skipped:
#
# ```bash
# rlhf-course labels merge class_labels/ --out class_preferences.jsonl
# ```
#
# In a notebook the cell below runs it as `python -m rlhf_course` with the notebook's own Python
# (`sys.executable`), which works even where the environment's `bin` folder is not on the PATH.

# %%
# NBVAL_IGNORE_OUTPUT
# !{sys.executable} -m rlhf_course labels merge {class_dir} --out {WORK / "class_preferences.jsonl"}

# %%
merged = load_preferences(WORK / "class_preferences.jsonl")
print(f"{len(merged)} pairs; columns: {merged.column_names}")
print("votes per pair:", dict(sorted(Counter(merged["votes"]).items())))

# %% [markdown]
# The merged file is a preference dataset like any other: pass it to `train_reward_model` (notebook 5)
# or `train_dpo` (notebook 7). Its `margin` column (the mean "much better" of the winning votes) feeds
# the margin loss.
#
# ## Summary
#
# - Preference data is `prompt` / `chosen` / `rejected`, plain or conversational, with an optional
#   `margin`; check it before training (`validate-data`).
# - Labels are written the moment they are given; a label file is a log that can be replayed,
#   resumed and merged.
# - Labels are noisy (Bradley-Terry, the Bayes limit) and labellers are biased. Measure agreement
#   with kappa, not just percent.
# - An AI judge (RLAIF, Constitutional AI) scales labelling, but measure it first: the policy will
#   find its mistakes.
# - On-policy rounds keep the labels about the model's current mistakes.
#
# **Next**: notebook 5 trains the reward model these labels are for.
