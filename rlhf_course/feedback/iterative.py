"""The iterative on-policy loop: sample pairs from the current policy -> label them (a person or a
judge) -> train with DPO -> repeat, and watch the ground-truth reward round after round.

Preference data goes stale: labels on the SFT model's answers say little about the mistakes of the
model after training. So real RLHF collects labels in rounds, on the latest model's answers:
Anthropic's "iterated online RLHF" (Bai et al. 2022, arXiv:2204.05862, Sec. 4.5), Llama 2's weekly
batches (arXiv:2307.09288, Sec. 3.2.1), and iterative DPO (Xiong et al. 2023, arXiv:2312.11456;
Self-Rewarding LMs, Yuan et al. 2024, arXiv:2401.10020, where the policy is also its own judge).

    judge = feedback.RewardModelJudge(rm, tokenizer)
    result = iterative_loop(profile, judge, model_id="/tmp/sft", config=LoopConfig(rounds=2, dpo_steps=20))
    result.rewards                      # ground-truth reward: [start, after round 1, after round 2]
    plot_rounds(result)

Without a ground truth (the 7b profile's free text) an independent judge (`gold.load_judge`) scores each
round (`judge=`), and can label the pairs too: `feedback.RewardModelJudge(judge.model, judge.tokenizer)`.

Each round: 1. sample two answers per prompt from the current model (`feedback.sample_pairs`, at the
profile's temperature); 2. label them: a judge (`feedback.Judge`) or a labeller function
(`feedback.label_pairs`, e.g. a simulated student), written to one label file per round; 3. DPO
(`dpo.train_dpo`) from the current model, which is also the round's reference; 4. evaluate against
the ground truth, or the judge (`evaluation.evaluate_policy`). The trained model, merged, starts the next
round. One model at a time: the round's sampler is freed before DPO loads its own (a T4 holds one 4-bit 7B).
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from matplotlib.figure import Figure

from rlhf_course import plots, toyworld
from rlhf_course.dpo import train_dpo
from rlhf_course.evaluation import best_possible_reward, evaluate_policy
from rlhf_course.feedback.ai_feedback import Judge
from rlhf_course.feedback.label_file import Label
from rlhf_course.feedback.pairs import Pair, sample_pairs
from rlhf_course.feedback.session import LabellerFn, label_pairs
from rlhf_course.feedback.to_preferences import labels_to_preferences
from rlhf_course.loading import free_memory, load_policy, load_tokenizer
from rlhf_course.profiles import Profile
from rlhf_course.sampling import RewardFn
from rlhf_course.sft import save_merged


@dataclass
class LoopConfig:
    """The loop's knobs. Defaults fit a notebook on 2 CPU cores (about 12 s per round on the tiny model)."""

    # rounds and data
    rounds: int = 2                 # K: sample -> label -> train, K times
    prompts_per_round: int = 128    # prompts drawn per round (two answers each; identical pairs are dropped)
    # DPO, each round
    dpo_steps: int = 20             # optimiser steps per round, from the current model
    beta: float | None = None       # None: the profile's recipe (profile.recipe.online_dpo_beta)
    learning_rate: float | None = None
    # evaluation, after each round
    eval_n_per_prompt: int = 4      # answers per held-out prompt (toyworld.eval_prompts(): 40 prompts; a judge: 1)
    seed: int = 0


@dataclass
class RoundResult:
    """One round: its data and where the policy stands after it (round 0: the starting model)."""

    round: int
    reward: float                   # ground-truth reward on the held-out prompts (off the toy world: the judge's)
    well_formed: float              # share of answers made only of the world's sentences
    n_pairs: int = 0                # pairs sampled and labelled this round
    n_preferences: int = 0          # of which a preference (not a tie or a skip): DPO's data
    dpo: dict = field(default_factory=dict)  # train_dpo's final metrics
    seconds: float = 0.0


@dataclass
class LoopResult:
    rounds: list[RoundResult]
    model: object                   # the policy after the last round
    model_id: str                   # a folder with it, merged (the start when no round was trained)
    labels: list[list[Label]] = field(default_factory=list)  # each round's labels

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.rounds]


def label_round(labeller: Judge | LabellerFn, pairs: list[Pair], path: Path, seed: int) -> list[Label]:
    """Label a round's pairs, written to `path`: a judge labels them all at once (batched); a labeller
    function (a person's stand-in) goes through the same labelling session as the widget."""
    if isinstance(labeller, Judge):
        return labeller.label(pairs, path=path, seed=seed)
    return label_pairs(pairs, path, labeller).labels


def _evaluate(model, tokenizer, profile: Profile, config: LoopConfig, prompts, judge) -> dict:
    result = evaluate_policy(model, tokenizer, prompts, n_per_prompt=config.eval_n_per_prompt,
                             max_new_tokens=profile.max_new_tokens, temperature=profile.temperature, seed=config.seed,
                             judge=judge)
    summary = result.summary()
    return {"reward": summary.get("reward", float("nan")), "well_formed": summary.get("well_formed", float("nan"))}


def iterative_loop(profile: Profile, labeller: Judge | LabellerFn, *, model_id: str | None = None,
                   prompts: list | None = None, eval_prompts: list | None = None,
                   config: LoopConfig = LoopConfig(), work_dir: str | Path | None = None,
                   judge: RewardFn | None = None, progress: bool = False) -> LoopResult:
    """Run K rounds of sample -> label -> DPO -> evaluate, starting from `model_id` (the merged SFT model;
    default: the profile's base). `prompts`: where pairs are sampled (default: the toy world's training
    prompts); `eval_prompts`: the held-out prompts (default: `toyworld.eval_prompts()`). `judge`: what
    scores the held-out answers of prompts outside the toy world (`gold.load_judge(profile)`).

    `work_dir` keeps each round's label file (`labels_round{k}.jsonl`) and merged model (`round{k}/`);
    default: a temporary folder. Full-precision bases: each round continues from the last round's merged
    model, which is also its DPO reference. A 4-bit base (the 7b profile) cannot take a LoRA adapter
    in, so there each round trains a fresh adapter on the starting model with every pair labelled so
    far (still sampled from the latest policy) - the same loop, with a fixed reference.
    """
    work = Path(work_dir or tempfile.mkdtemp(prefix="rlhf-course-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    prompts = [toyworld.as_prompt(p) for p in (prompts or toyworld.train_prompts())]
    rng = random.Random(config.seed)
    tokenizer = load_tokenizer(profile, model_id)
    start = model_id or profile.model_path
    model = load_policy(profile, lora=False, model_id=start, verbose=progress)
    merge = not profile.load_in_4bit
    current, all_preferences, all_labels = start, [], []

    t0 = time.perf_counter()
    rounds = [RoundResult(0, **_evaluate(model, tokenizer, profile, config, eval_prompts, judge),
                          seconds=time.perf_counter() - t0)]
    for k in range(1, config.rounds + 1):
        t0 = time.perf_counter()
        # 1. on-policy pairs: two answers per prompt from the current model
        round_prompts = [rng.choice(prompts) for _ in range(config.prompts_per_round)]
        pairs = sample_pairs(model, tokenizer, round_prompts, max_new_tokens=profile.max_new_tokens,
                             temperature=profile.temperature, seed=config.seed + k)
        # 2. labels, written to this round's label file
        labels = label_round(labeller, pairs, work / f"labels_round{k}.jsonl", config.seed + k)
        preferences = labels_to_preferences(labels)
        all_labels.append(labels)
        all_preferences += preferences
        if not preferences:
            raise RuntimeError(f"round {k}: no pair got a preference (all ties or skips): nothing to train on")
        # 3. DPO from the current model; the dataset keeps prompt/chosen/rejected (margins are a reward-model idea)
        data = datasets.Dataset.from_list(preferences if merge else all_preferences)
        model = result = None  # one model at a time: DPO loads its own (a T4 holds one 4-bit 7B, not two)
        free_memory()
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
        with quiet:  # TRL's Trainer prints each log line when there is no progress bar
            result = train_dpo(profile, data, model_id=current if merge else start, steps=config.dpo_steps,
                               beta=config.beta or profile.recipe.online_dpo_beta,
                               learning_rate=config.learning_rate, progress=progress,
                               seed=config.seed + k)
        model = result.model
        if merge:
            current = str(save_merged(model, tokenizer, work / f"round{k}"))
            model = load_policy(profile, lora=False, model_id=current, verbose=False)
        # 4. where the policy stands now
        rounds.append(RoundResult(k, **_evaluate(model, tokenizer, profile, config, eval_prompts, judge),
                                  n_pairs=len(pairs), n_preferences=len(preferences), dpo=result.metrics,
                                  seconds=time.perf_counter() - t0))
        if progress:
            r = rounds[-1]
            print(f"round {k}: {r.n_preferences} preferences from {r.n_pairs} pairs, "
                  f"{'ground-truth' if judge is None else 'judged'} reward {r.reward:.3f} ({r.seconds:.0f}s)")
    return LoopResult(rounds, model, current, all_labels)


def plot_rounds(results: LoopResult | dict[str, LoopResult], *, best: float | None = None, path=None) -> Figure:
    """Ground-truth reward per round (round 0 = the starting model), one line per loop; a dashed line at
    the best possible reward on the held-out prompts (default: the toy world's). best=NaN: a judge's
    rewards, which have no known best (no line). Returns a closed Figure (end a cell with it)."""
    import matplotlib.pyplot as plt

    results = {"on-policy DPO": results} if isinstance(results, LoopResult) else results
    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    for name, result in results.items():
        ax.plot([r.round for r in result.rounds], result.rewards, marker="o", label=name)
    best = best_possible_reward() if best is None else best
    judged = math.isnan(best)
    if not judged:
        ax.axhline(best, color="grey", linestyle="--", linewidth=1, label=f"best possible ({best:.2f})")
    n = max(len(r.rounds) for r in results.values())
    ax.set_xticks(range(n), ["start"] + [str(k) for k in range(1, n)])
    ax.set_xlabel("round (sample -> label -> DPO)")
    ax.set_ylabel("judged reward (mean per answer)" if judged else plots.REWARD_LABEL)
    ax.set_title(f"The iterative loop: {'judged' if judged else 'ground-truth'} reward per round")
    ax.legend(loc="lower right", fontsize=8)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig
