"""AI feedback (RLAIF): a model, not a person, says which of two answers is better.

People are slow and expensive; a judge model labels thousands of pairs an hour. Constitutional AI
(Bai et al. 2022, arXiv:2212.08073) has the model judge answers against a short written list of
principles, a *constitution*; RLAIF (Lee et al. 2023, arXiv:2309.00267) showed such labels can train
a policy about as well as human ones. Whether to trust a judge is measured, not assumed: label the
same pairs by people and by the judge and report their agreement and Cohen's kappa.

A judge is a callable `judge(pairs) -> list[float]`: for each `feedback.Pair`, P(answer A is better).

    tiny profile:  PrincipleJudge()                           the constitution applied sentence by sentence
                   GroundTruthJudge()                         the toy world's ground truth, with noise (a person)
                   RewardModelJudge(rm, tokenizer)            a trained reward model: sigmoid(r_A - r_B)
    7b profile:    ConstitutionalJudge(model, tokenizer)      the model reads the constitution, answers A or B

    labels = judge.label(pairs)                               feedback.Label objects, like a person's 
    compare_labels(human_labels, labels)                      agreement %, Cohen's kappa
    critique(prompt, answer), revise(prompt, answer)          Constitutional AI's critique-and-revise step

The constitutional judge is written for a 7B chat model; on the tiny model it runs (the tests use
it to check the code path and the position-swap symmetry) but its verdicts mean nothing: the tiny
model cannot read. At tiny scale the constitution is applied by `critique`: each principle is a critic
that reads the answer sentence by sentence, with the world knowledge a 7B brings from pretraining (which
sentence is a step for which task, which is rude or filler, which requests are harmful) taken from the toy
world's sentence bank. The judge prefers the answer with more steps and fewer critiques; `revise`
drops what the critiques name, as the supervised stage of Constitutional AI rewrites an answer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_course import toyworld
from rlhf_course.feedback.agreement import Agreement, compare_labels
from rlhf_course.feedback.label_file import Label
from rlhf_course.feedback.pairs import Pair
from rlhf_course.feedback.session import LabellingSession
from rlhf_course.feedback.simulated import bradley_terry
from rlhf_course.logprobs import token_logprobs
from rlhf_course.profiles import Profile
from rlhf_course.sampling import render_prompts

# Constitutional AI's principles are short instructions a model can apply to a pair of answers
# (arXiv:2212.08073, Appendix C); these five cover what the toy world's ground truth rewards.
CONSTITUTION = """\
Principles for a good answer:
1. Helpful: it answers the question that was asked, with concrete, correct steps.
2. Honest: it says so when the user's claim is wrong, instead of agreeing to please them.
3. Harmless: it politely refuses to help with anything that hurts someone or breaks the rules.
4. Respectful: it is never rude or condescending.
5. Concise: no filler, no repetition, nothing off topic."""

JUDGE_PROMPT = """\
{constitution}

A user wrote:
{prompt}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer follows the principles better? Reply with one letter, A or B."""


class Judge:
    """Base class: subclasses give P(A is better) for each pair; `label` turns that into labels."""

    name = "judge"

    def __call__(self, pairs: list[Pair]) -> list[float]:
        raise NotImplementedError

    def label(self, pairs: list[Pair], *, sample: bool = False, seed: int = 0, tie_band: float = 0.0,
              path: str | Path | None = None, labeller_id: str | None = None) -> list[Label]:
        """The judge's labels of `pairs`, one `Label` per pair (in the label-file format).

        sample=False: the more likely answer wins (a tie when |P - 0.5| <= tie_band);
        sample=True: the decision is drawn with probability P (a noisy labeller, seeded).
        path: also write the labels to a label file through a `LabellingSession`, exactly as a person's
        labels are written (so a judge can be merged with a class as one more labeller)."""
        pairs = list(pairs)
        probs = self(pairs)
        rng = random.Random(seed)
        decisions = {}
        for pair, p in zip(pairs, probs, strict=True):
            if sample:
                decisions[pair.id] = "a" if rng.random() < p else "b"
            else:
                decisions[pair.id] = "a" if p > 0.5 + tie_band else "b" if p < 0.5 - tie_band else "tie"
        labeller_id = labeller_id or f"judge:{self.name}"
        if path is not None:
            session = LabellingSession(pairs, path, labeller_id)
            session.run(lambda pair: decisions[pair.id])
            return [label for label in session.labels if label.pair_id in decisions]
        return [Label(pair.id, pair.prompt, pair.answer_a, pair.answer_b, decisions[pair.id], False, labeller_id)
                for pair in pairs]


# ------------------------------------------------------------------------------ tiny: the ground truth, noisy


class GroundTruthJudge(Judge):
    """The toy world's ground truth through a Bradley-Terry labeller: P(A) = sigmoid((u_A - u_B) / T).
    A higher `temperature` is a noisier judge; `attribute` judges helpfulness or harmlessness only."""

    name = "ground-truth"

    def __init__(self, labeller: toyworld.Labeller = toyworld.Labeller(temperature=0.3)):
        self.labeller = labeller

    def __call__(self, pairs: list[Pair]) -> list[float]:
        probs = []
        for pair in pairs:
            prompt = toyworld.parse_prompt(toyworld.prompt_text(pair.prompt))
            u_a, u_b = self.labeller.utility(prompt, pair.answer_a), self.labeller.utility(prompt, pair.answer_b)
            probs.append(bradley_terry(u_a, u_b, self.labeller.temperature))
        return probs


# ------------------------------------------------------------------------------ tiny: a reward model


class RewardModelJudge(Judge):
    """A trained reward model as the judge: P(A) = sigmoid(r(x, A) - r(x, B)), the Bradley-Terry
    probability the model was trained to predict (InstructGPT, Eq. 1 of arXiv:2203.02155)."""

    name = "reward-model"

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def __call__(self, pairs: list[Pair]) -> list[float]:
        from rlhf_course.reward_model import score_texts

        n = len(pairs)
        prompts = [p.prompt for p in pairs] * 2
        rewards = score_texts(self.model, self.tokenizer, prompts, [p.answer_a for p in pairs] +
                              [p.answer_b for p in pairs], self.batch_size)  # (2N,)
        return torch.sigmoid(rewards[:n] - rewards[n:]).tolist()


# ------------------------------------------------------------------------------ 7b: a constitution


def judge_prompt(pair: Pair, constitution: str = CONSTITUTION, swap: bool = False) -> str:
    """The question put to the judge model; `swap` shows B's text as answer A and A's as answer B."""
    a, b = (pair.answer_b, pair.answer_a) if swap else (pair.answer_a, pair.answer_b)
    return JUDGE_PROMPT.format(constitution=constitution, prompt=toyworld.prompt_text(pair.prompt), answer_a=a, answer_b=b)


@torch.no_grad()
def letter_logprobs(model, tokenizer, questions: list[str], letters: tuple[str, ...] = ("A", "B"),
                    batch_size: int = 8) -> torch.Tensor:
    """log p(letter | question) for each question and letter: (N, len(letters)).

    The question is rendered with the chat template and the assistant's turn opened; the letter is
    what the assistant would write first. A letter may be several tokens (the tiny tokenizer writes
    "A" as two): its log-prob is summed over them, so any tokenizer works."""
    rendered = render_prompts(tokenizer, questions)
    rows, masks = [], []
    for text in rendered:
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for letter in letters:
            ids = tokenizer(text + letter, add_special_tokens=False)["input_ids"]
            if ids[: len(prompt_ids)] != prompt_ids:  # the letter merged into the prompt's last token
                ids = prompt_ids + tokenizer(letter, add_special_tokens=False)["input_ids"]
            rows.append(ids)
            masks.append([0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids)))
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        chunk, chunk_masks = rows[i : i + batch_size], masks[i : i + batch_size]
        width = max(map(len, chunk))
        pad = tokenizer.pad_token_id
        # left-padded, so every row's letter ends in the last column: only the last few positions need the
        # vocabulary-sized logits (`logits_to_keep`), which on a long question is most of the work
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk])                 # (b, T)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk])   # (b, T)
        completion_mask = torch.tensor([[0] * (width - len(m)) + m for m in chunk_masks])       # (b, T)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # each row's positions as if unpadded
        keep = int(completion_mask.sum(dim=1).max()) + 1                # the letters' tokens and the one before
        device = model.device
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                       position_ids=position_ids.to(device), logits_to_keep=keep).logits   # (b, keep, V)
        logps = token_logprobs(logits[:, :-1], input_ids[:, 1 - keep:].to(device))          # (b, keep - 1)
        out.append((logps * completion_mask[:, 1 - keep:].to(device)).sum(dim=1).float().cpu())  # (b,)
    model.train(was_training)
    return torch.cat(out).view(len(questions), len(letters))


class ConstitutionalJudge(Judge):
    """The policy model (or any chat model) as a judge, Constitutional-AI style: it reads the
    constitution, the prompt and answers A and B, and we compare its log-probs of answering "A" and
    "B" (arXiv:2212.08073, Sec. 4.1: the normalised probabilities are the soft preference label).

    LLM judges favour whichever answer comes first (or second): each pair is asked twice, in both
    orders, and the two probabilities for the same answer are averaged, which cancels a pure position
    bias (RLAIF, arXiv:2309.00267, Sec. 2.1.1). So judge(A, B) = 1 - judge(B, A) exactly.
    Written for the 7b profile; untested on a 7B model here (no GPU in CI)."""

    name = "constitution"

    def __init__(self, model, tokenizer, constitution: str = CONSTITUTION, batch_size: int = 8):
        self.model, self.tokenizer, self.constitution, self.batch_size = model, tokenizer, constitution, batch_size

    def __call__(self, pairs: list[Pair]) -> list[float]:
        questions = [judge_prompt(p, self.constitution, swap) for p in pairs for swap in (False, True)]
        logps = letter_logprobs(self.model, self.tokenizer, questions, ("A", "B"), self.batch_size)  # (2N, 2)
        probs = torch.softmax(logps, dim=-1).view(len(pairs), 2, 2)   # (N, order, letter)
        p_first = probs[:, 0, 0]   # as shown: P("A") = P(answer A is better)
        p_swapped = probs[:, 1, 1]  # swapped: answer A is shown second, so P("B") = P(answer A is better)
        return ((p_first + p_swapped) / 2).tolist()


# ------------------------------------------------------------------------------ tiny: the constitution, applied


@dataclass(frozen=True)
class Critique:
    """One thing a principle objects to in an answer (Constitutional AI's critique, one line)."""

    principle: str  # the principle's name in the constitution, e.g. "Respectful"
    sentence: str   # the answer's sentence it objects to; "" for the answer as a whole
    why: str


def principles(constitution: str = CONSTITUTION) -> dict[str, str]:
    """The constitution's principles, name -> text ("4. Respectful: it is never rude ..." -> "Respectful")."""
    out = {}
    for line in constitution.splitlines():
        head, _, text = line.partition(":")
        number, _, name = head.partition(". ")
        if number.strip().isdigit() and name and text:
            out[name.strip()] = text.strip()
    return out


def critique(prompt, answer: str) -> list[Critique]:
    """Apply each principle of the constitution to `answer`, sentence by sentence (Constitutional AI's
    critique, arXiv:2212.08073, Sec. 3.1). The critics know the toy world as a 7B knows the real one: which
    sentence is a step for which task (`toyworld.SENTENCES`), which requests are harmful, which tip a claim
    names. They know nothing of the ground truth's weights."""
    world = toyworld.parse_prompt(toyworld.prompt_text(prompt))
    claim_right = world.claim is not None and toyworld.SENTENCES.get(world.claim) == ("tip", world.task)
    out, seen, steps, refused = [], set(), 0, False
    for s in toyworld.split_sentences(answer):
        kind, task = toyworld.SENTENCES.get(s, ("garbled", None))
        if s in seen and kind != "garbled":
            out.append(Critique("Concise", s, "says the same thing twice"))
            continue
        seen.add(s)
        if kind == "garbled":
            out.append(Critique("Concise", s, "is not a clear sentence"))
        elif kind == "filler":
            out.append(Critique("Concise", s, "is filler: it tells the user nothing"))
        elif kind in ("tip", "harmful_tip") and task != world.task:
            out.append(Critique("Concise", s, "is off topic: a step for another task"))
        elif kind == "harmful_tip":
            out.append(Critique("Harmless", s, "helps with a request that hurts someone or breaks the rules"))
        elif kind == "tip":
            steps += 1
        elif kind == "rude":
            out.append(Critique("Respectful", s, "is rude to the user"))
        elif kind == "refusal":
            refused = True
            if not world.harmful:
                out.append(Critique("Helpful", s, "refuses a harmless request"))
        elif world.claim is None:
            out.append(Critique("Concise", s, "answers a question nobody asked"))
        elif (kind == "agree") != claim_right:
            out.append(Critique("Honest", s, "agrees with a wrong claim" if kind == "agree" else
                                "contradicts a right claim"))
    if world.harmful and not refused:
        out.append(Critique("Harmless", "", "does not refuse a request that hurts someone or breaks the rules"))
    if not world.harmful and not steps:
        out.append(Critique("Helpful", "", "gives no concrete step for the question that was asked"))
    return out


def helpful_steps(prompt, answer: str) -> int:
    """The distinct steps for the asked task that the Helpful principle credits (none on a harmful request)."""
    world = toyworld.parse_prompt(toyworld.prompt_text(prompt))
    return len({s for s in toyworld.split_sentences(answer) if toyworld.SENTENCES.get(s) == ("tip", world.task)})


def revise(prompt, answer: str) -> str:
    """Constitutional AI's revision (Sec. 3.1): rewrite the answer so that no principle objects. At tiny scale
    the reviser can only cut: every criticised sentence goes, and a harmful request gets a polite refusal.
    An answer with nothing left is kept (a 7B would write new steps; this one cannot)."""
    critiques = critique(prompt, answer)
    if not critiques:
        return answer
    if toyworld.parse_prompt(toyworld.prompt_text(prompt)).harmful:
        return toyworld.join_sentences([toyworld.REFUSAL[0]])
    named = {c.sentence for c in critiques if c.sentence}
    kept, seen = [], set()
    for s in toyworld.split_sentences(answer):
        if s not in named and s not in seen:
            kept.append(s)
        seen.add(s)
    return toyworld.join_sentences(kept) if kept else answer


class PrincipleJudge(Judge):
    """The constitution applied to both answers (`critique`): each answer scores one point per distinct
    step for the asked task, minus one per critique, and P(A) = sigmoid((score_A - score_B) / temperature).
    Equal scores give 0.5 (a tie). The tiny profile's AI judge: it reads each answer against the
    principles, not against labels, so its labels agree with the ground truth only as far as the
    constitution says what the ground truth rewards."""

    name = "constitution"

    def __init__(self, temperature: float = 0.5):
        self.temperature = temperature

    def score(self, prompt, answer: str) -> int:
        return helpful_steps(prompt, answer) - len(critique(prompt, answer))

    def __call__(self, pairs: list[Pair]) -> list[float]:
        return [1.0 / (1.0 + math.exp(-(self.score(p.prompt, p.answer_a) - self.score(p.prompt, p.answer_b))
                                      / self.temperature)) for p in pairs]


# ------------------------------------------------------------------------------ picking a judge, measuring it


def make_judge(profile: Profile, *, model=None, tokenizer=None, reward_model=None,
               labeller: toyworld.Labeller | None = None) -> Judge:
    """The profile's AI judge. With a ground truth (the toy world's tiny model, which cannot read a
    constitution): the constitution applied by `critique` (`PrincipleJudge`), or a reward model judge if
    `reward_model` is given, or the noisy ground truth if `labeller` is. Without (the 7b profile): the chat
    `model` prompted with the constitution."""
    if profile.has_ground_truth:
        if reward_model is not None:
            return RewardModelJudge(reward_model, tokenizer)
        if labeller is not None:
            return GroundTruthJudge(labeller)
        return PrincipleJudge()
    if model is None or tokenizer is None:
        raise ValueError("the 7b profile's judge is the chat model itself: pass model= and tokenizer=")
    return ConstitutionalJudge(model, tokenizer)


def judge_agreement(judge: Judge, reference: list[Label], **label_kwargs) -> Agreement:
    """Label the pairs of `reference` (labels by people, or by the ground truth) with `judge`, and
    measure how often the two agree: `Agreement` with n_items, percent and cohen_kappa."""
    return compare_labels(reference, judge.label([label.pair for label in reference], **label_kwargs))
