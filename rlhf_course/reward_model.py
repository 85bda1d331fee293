"""Reward modelling: learn a scalar reward r(x, y) from pairwise human preferences.

A labeller saw a prompt x and two answers and preferred y_c ("chosen") to y_r ("rejected").
The Bradley-Terry model (1952) says P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)); a reward
model is trained by maximising the likelihood of the labels (InstructGPT, Eq. 1 of arXiv:2203.02155).
The model is the policy's architecture with its language-model head replaced by a one-output `score`
head read at the last token (AutoModelForSequenceClassification, num_labels=1).

    result = train_reward_model(profile)                  # TRL's RewardTrainer + LoRA (the classic path)
    result.metrics                                        # {"accuracy": 0.85, "bayes_accuracy": 0.925, ...}
    rewards = score_texts(result.model, tok, prompts, completions)   # (N,)
    fn = reward_fn(result.model, tok)                     # fn(prompts, completions) -> list[float], for PPO

This module, top to bottom: 1. the loss; 2. how a (prompt, answer) becomes tokens, and scoring;
3. accuracy; 4. training with TRL; 5. the same training as a short loop written out; 6. two reward
models (helpful and harmless) combined as in Llama 2.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_scheduler
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning

from rlhf_course import toyworld
from rlhf_course.loading import adapter_base, is_adapter, keep_trainable_fp32, load_reward_model, load_tokenizer
from rlhf_course.paths import REPO_ROOT, data_path
from rlhf_course.preferences import detect_format, load_preferences, to_conversational
from rlhf_course.profiles import Profile
from rlhf_course.sampling import RewardFn, as_messages
from rlhf_course.training import TrainResult, run_trl_trainer, steps_or_default, trl_common_args

# AdamW learning rate per profile: the tiny model's LoRA likes it high; a 7B's LoRA wants TRL's default
LR_SCHEDULE = "cosine"        # shared by the TRL path and the from-scratch loop, so they can be compared
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0           # transformers.Trainer's default, used by the TRL path; the loop below does the same


# ------------------------------------------------------------------------------ 1. the loss


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward model's loss on a batch of pairs, and the fraction of pairs it ranks right.

    loss = -mean log sigmoid(r(x, y_c) - r(x, y_r))              InstructGPT, Eq. 1 (arXiv:2203.02155)
    loss = -mean log sigmoid(r(x, y_c) - r(x, y_r) - m(r))       Llama 2, Eq. 2 (arXiv:2307.09288)

    The margin m(r) >= 0 asks for a larger gap on pairs the labellers found clearly different.
    chosen_rewards, rejected_rewards, margin: (B,). Returns (loss (), accuracy ()); a tie counts 1/2
    (TRL's logged accuracy counts it as wrong).
    """
    assert chosen_rewards.shape == rejected_rewards.shape and chosen_rewards.dim() == 1, \
        f"expected two (B,) tensors, got {tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
    logits = chosen_rewards - rejected_rewards                                  # (B,)
    if margin is not None:
        logits = logits - margin.to(logits)
    # logsigmoid, not log(sigmoid(.)): sigmoid underflows to 0 for a large negative gap and log(0) = -inf
    loss = -F.logsigmoid(logits).mean()
    return loss, preference_accuracy(chosen_rewards, rejected_rewards)


@torch.no_grad()
def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """The share of pairs ranked like the labeller, r(x, y_c) > r(x, y_r); a tie counts 1/2 (a coin flip).
    TRL's logged accuracy counts a tie as wrong. (B,), (B,) -> () float."""
    wins = (chosen_rewards > rejected_rewards).float()    # (B,)
    ties = (chosen_rewards == rejected_rewards).float()   # (B,)
    return (wins + 0.5 * ties).mean()


# ------------------------------------------------------------------------------ 2. tokens and scores


def conversation(prompt: str | list[dict], completion) -> list[dict]:
    """The messages a reward model reads: the prompt (a plain prompt is one user turn) + the answer.

    `completion`: a plain string, a `sampling.Completion`, or a list of assistant messages (the
    conversational `chosen`/`rejected` of a preference row, appended as is, as TRL does).
    """
    if isinstance(completion, list):
        return as_messages(prompt) + completion
    text = completion if isinstance(completion, str) else completion.text
    return as_messages(prompt) + toyworld.assistant(text)


def tokenize_conversations(tokenizer, prompts: list, completions: list) -> list[list[int]]:
    """Token ids of each (prompt, completion), exactly as TRL's RewardTrainer makes them.

    TRL (`RewardTrainer._prepare_dataset`) applies the chat template to `prompt + chosen`, with no
    generation prompt; the template closes the assistant turn with its end token, so the score head
    reads the end-of-turn token both in training and here. (A plain-text row would instead be
    tokenized raw with an EOS appended; `train_reward_model` converts plain rows to conversations
    first, so one rendering serves every dataset.)
    """
    assert len(prompts) == len(completions), f"{len(prompts)} prompts but {len(completions)} completions"
    return [tokenizer.apply_chat_template(conversation(p, c), tokenize=True, return_dict=True)["input_ids"]
            for p, c in zip(prompts, completions)]


def pad_right(ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), padded on the right as TRL's collator does, so each
    answer sits at the positions it had in training. (Llama's rotary positions are relative, so left
    padding gives the same scores up to float error; a model with absolute positions would not.)"""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def pad_for_reward_model(tokenizer):
    """Make `tokenizer` pad with a token that never closes a turn, for a reward model, and return it.
    transformers' sequence classifiers read the last token that is *not* the pad token; a tokenizer that
    pads with its EOS (Zephyr's `</s>`, which also closes every turn) would make the head skip the
    closing `</s>` it should read. Such a tokenizer pads with `<unk>` instead."""
    if tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list, completions: list, batch_size: int = 64) -> torch.Tensor:
    """The reward of each (prompt, completion): a float tensor (N,) on the CPU.

    prompts: plain strings or conversations; completions: strings, `sampling.Completion`s or lists of
    assistant messages. The head reads the last non-pad token, i.e. the closing end-of-turn token: an
    answer cut at the length limit is scored as if it had ended (see `reward_fn`'s missing_eos_penalty).
    """
    ids = tokenize_conversations(tokenizer, prompts, completions)
    # the id a sequence classifier's "last real token" rule skips (pad_for_reward_model); any other model: the tokenizer's
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(ids), batch_size):
        input_ids, attention_mask = pad_right(ids[i : i + batch_size], pad_id)
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                       use_cache=False).logits                                    # (b, 1)
        out.append(logits.squeeze(-1).float().cpu())                                # (b,)
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def reward_fn(model, tokenizer, *, batch_size: int = 64,
              missing_eos_penalty: float | None = None) -> RewardFn:
    """A reward function with the package's protocol: fn(prompts, completions) -> list[float].

    missing_eos_penalty: subtracted from the reward of a `Completion` that did not end (cut at
    max_new_tokens); the reward model never saw an unfinished answer, so without it a long ramble
    can score well (TRL's `missing_eos_penalty`; lm-human-preferences penalises such answers too).
    """
    def fn(prompts: list, completions: list) -> list[float]:
        rewards = score_texts(model, tokenizer, prompts, completions, batch_size).tolist()
        if missing_eos_penalty is not None:
            rewards = [r - missing_eos_penalty if getattr(c, "ended", True) is False else r
                       for r, c in zip(rewards, completions)]
        return rewards
    return fn


# ------------------------------------------------------------------------------ 3. accuracy


def pair_rewards(model, tokenizer, dataset, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of every chosen and every rejected answer of a preference dataset: two (N,) tensors."""
    rows = to_conversational_dataset(load_preferences(dataset, validate=False))
    n = len(rows)
    rewards = score_texts(model, tokenizer, list(rows["prompt"]) * 2, list(rows["chosen"]) + list(rows["rejected"]),
                          batch_size)                                               # (2N,)
    return rewards[:n], rewards[n:]


def reward_accuracy(model, tokenizer, dataset, batch_size: int = 64) -> float:
    """Fraction of pairs whose chosen answer gets the higher reward (a tie counts 1/2).
    `dataset`: a preference Dataset (plain or conversational) or a JSONL path."""
    chosen, rejected = pair_rewards(model, tokenizer, dataset, batch_size)
    return bradley_terry_loss(chosen, rejected)[1].item()


def held_out_metrics(model, tokenizer, dataset) -> dict:
    """`accuracy` on a preference set and, when its rows carry the labeller's `p_chosen`, the Bayes
    limit `bayes_accuracy` (the best any reward model can do on these labels) and the `gap_to_bayes`."""
    dataset = load_preferences(dataset, validate=False)
    metrics = {"accuracy": reward_accuracy(model, tokenizer, dataset)}
    if "p_chosen" in dataset.column_names:
        metrics["bayes_accuracy"] = toyworld.bayes_accuracy(dataset["p_chosen"])
        metrics["gap_to_bayes"] = metrics["bayes_accuracy"] - metrics["accuracy"]
    return metrics


# ------------------------------------------------------------------------------ 4. training with TRL


def load_rm_data(split: str = "train") -> datasets.Dataset:
    """The toy world's preference pairs: "train" (4000 pairs) or "test" (1000, every prompt, other seed)."""
    return load_preferences(data_path("toy", f"preferences_{split}.jsonl"))


def to_conversational_dataset(dataset: datasets.Dataset) -> datasets.Dataset:
    """Plain rows become conversations (prompt = a user turn), so training and scoring render alike."""
    if len(dataset) == 0 or detect_format(dataset[0]) == "conversational":
        return dataset
    return dataset.map(to_conversational)


def _load_rm(profile: Profile, **kwargs):
    # `load_reward_model`, without transformers' report that the causal-LM checkpoint has no
    # `score.weight`: the head is new on purpose (TRL silences it the same way)
    with suppress_seqcls_warning():
        return load_reward_model(profile, **kwargs)



def train_reward_model(
    profile: Profile, dataset=None, eval_dataset=None, *, model_id: str | None = None, steps: int | None = None,
    learning_rate: float | None = None, load_in_4bit: bool | None = None, lora: bool = True,
    center_rewards_coefficient: float | None = None, out_dir: str | None = None, progress: bool = True,
    seed: int = 0, checkpoint_dir: str | Path | None = None, resume: bool = False, save_every: int | None = None,
) -> TrainResult:
    """Train a reward model with TRL's `RewardTrainer`: Bradley-Terry loss (+ margin if the data has a
    `margin` column), LoRA on the body (task SEQ_CLS) and the new `score` head trained in full.

    dataset / eval_dataset: preference Datasets or JSONL paths, plain or conversational (default: the
    toy world's `preferences_train.jsonl` / `preferences_test.jsonl`). model_id: the model to start
    from, e.g. a merged SFT model folder (default: the profile's base model). steps: profile.rm_steps.
    center_rewards_coefficient: push the mean reward to 0 (arXiv:2312.09244, Eq. 2; e.g. 0.01).
    checkpoint_dir / resume / save_every: keep checkpoints (e.g. in a Drive folder) and continue from
    the last one; a resumed run ends exactly as an uninterrupted one.

    Returns TrainResult(model, metrics, history): metrics has the held-out `accuracy`, its
    `bayes_accuracy` (the best any model can do on these labels, when the rows carry `p_chosen`),
    `train_loss` and `train_seconds`; history is TRL's log (loss, accuracy, margin per logging step).

    With `out_dir`, `trainer.save_model(out_dir)` writes, for a LoRA model:
        adapter_config.json         LoRA settings, base_model_name_or_path, modules_to_save=["score"]
        adapter_model.safetensors   the LoRA weights of the body and the full `score` head
        tokenizer.json, tokenizer_config.json, chat_template.jinja   the tokenizer it was trained with
        README.md, training_args.bin   TRL's model card and the training arguments
    (without LoRA: config.json + model.safetensors, a plain sequence-classification model). Load it back
    onto the same base with `load_trained_reward_model(profile, out_dir)`; PPO puts it on the policy's
    base as a second adapter (`ppo.AdapterRewardModel`). The base's path is recorded in
    adapter_config.json: pass `model_id` when the folder moved to another machine.
    """
    if load_in_4bit and not lora:
        raise ValueError("4-bit weights cannot be trained: use lora=True with load_in_4bit=True (QLoRA)")
    steps = steps_or_default(steps, profile.rm_steps)
    train_data = to_conversational_dataset(load_preferences(dataset if dataset is not None else load_rm_data("train")))
    eval_data = to_conversational_dataset(load_preferences(eval_dataset if eval_dataset is not None
                                                            else load_rm_data("test")))
    tokenizer = pad_for_reward_model(load_tokenizer(profile, model_id))
    torch.manual_seed(seed)  # the score head is initialised at random
    model = _load_rm(profile, lora=lora, load_in_4bit=load_in_4bit, model_id=model_id, tokenizer=tokenizer,
                     verbose=progress)

    args = RewardConfig(
        **trl_common_args(profile, steps, out_dir, progress, seed, checkpoint_dir=checkpoint_dir, save_every=save_every),
        learning_rate=learning_rate or profile.recipe.rm_learning_rate,
        lr_scheduler_type=LR_SCHEDULE,
        warmup_steps=WARMUP_RATIO,
        max_grad_norm=MAX_GRAD_NORM,
        max_length=profile.max_length,              # TRL drops (does not cut) longer pairs
        center_rewards_coefficient=center_rewards_coefficient,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_data, processing_class=tokenizer)
    start = time.perf_counter()
    # the score head's logits and the Bradley-Terry loss want fp32: trained weights stay fp32 on every GPU
    out, history = run_trl_trainer(trainer, profile, progress=progress, desc="reward model", checkpoint_dir=checkpoint_dir, resume=resume)
    seconds = time.perf_counter() - start

    model = trainer.model
    metrics = {"train_loss": out.training_loss, "train_seconds": round(seconds, 1), "steps": steps,
               **held_out_metrics(model, tokenizer, eval_data)}
    if out_dir is not None:
        trainer.save_model(out_dir)  # the adapter + score head, and the tokenizer (see the docstring)
    return TrainResult(model, metrics, history)


def load_trained_reward_model(profile: Profile, path: str | Path, *, model_id: str | None = None,
                              load_in_4bit: bool | None = None, verbose: bool = True):
    """A reward model saved by `train_reward_model(out_dir=path)`, in eval mode.
    model_id must be the base it was trained on (default: the one recorded in the adapter)."""
    from peft import PeftConfig, PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").exists():  # a full model folder
        return _load_rm(profile, lora=False, model_id=str(path), load_in_4bit=load_in_4bit, verbose=verbose).eval()
    if is_adapter(model_id):  # the SFT adapter it was started from: the reward model's LoRA already holds it
        model_id = adapter_base(profile, model_id)
    base = model_id or PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not Path(base).is_absolute() and not Path(base).exists() and (REPO_ROOT / base).exists():
        base = str(REPO_ROOT / base)  # the shipped adapters record their base relative to the repository
    model = _load_rm(profile, lora=False, model_id=base, load_in_4bit=load_in_4bit,
                     tokenizer=pad_for_reward_model(load_tokenizer(profile, str(path))), verbose=verbose)
    return PeftModel.from_pretrained(model, str(path)).eval()


# ------------------------------------------------------------------------------ 5. the same, from scratch


def train_reward_model_scratch(
    profile: Profile, dataset=None, eval_dataset=None, *, model_id: str | None = None, steps: int | None = None,
    learning_rate: float | None = None, load_in_4bit: bool | None = None, lora: bool = True,
    progress: bool = True, seed: int = 0,
) -> TrainResult:
    """What `RewardTrainer` does, written out: tokenize pairs -> score chosen and rejected ->
    Bradley-Terry loss -> AdamW. Same arguments, defaults and schedule as `train_reward_model`."""
    steps = steps_or_default(steps, profile.rm_steps)
    pairs = to_conversational_dataset(load_preferences(dataset if dataset is not None else load_rm_data("train")))
    eval_data = to_conversational_dataset(load_preferences(eval_dataset if eval_dataset is not None
                                                            else load_rm_data("test")))
    tokenizer = pad_for_reward_model(load_tokenizer(profile, model_id))
    torch.manual_seed(seed)
    model = _load_rm(profile, lora=lora, load_in_4bit=load_in_4bit, model_id=model_id, tokenizer=tokenizer,
                     verbose=progress)
    keep_trainable_fp32(model)
    model.train()

    # 1. tokenize every pair once, as TRL does (chat template over prompt + answer)
    chosen_ids = tokenize_conversations(tokenizer, pairs["prompt"], pairs["chosen"])
    rejected_ids = tokenize_conversations(tokenizer, pairs["prompt"], pairs["rejected"])
    margins = pairs["margin"] if "margin" in pairs.column_names else None

    params = [p for p in model.parameters() if p.requires_grad]
    learning_rate = learning_rate or profile.recipe.rm_learning_rate
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)  # Trainer's AdamW, no decay
    scheduler = get_scheduler(LR_SCHEDULE, optimizer, num_warmup_steps=math.ceil(WARMUP_RATIO * steps),
                              num_training_steps=steps)
    batch_size = profile.batch_size
    rng = random.Random(seed)
    order: list[int] = []
    history = []
    start = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc="reward model", disable=not progress):
        if len(order) < batch_size:  # a fresh shuffle each epoch
            order += rng.sample(range(len(pairs)), len(pairs))
        idx, order = order[:batch_size], order[batch_size:]

        # 2. one forward pass over chosen and rejected together: first half chosen, second half rejected
        input_ids, attention_mask = pad_right([chosen_ids[i] for i in idx] + [rejected_ids[i] for i in idx],
                                              tokenizer.pad_token_id)               # (2B, T)
        rewards = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                        use_cache=False).logits.squeeze(-1).float()                 # (2B,)
        chosen_rewards, rejected_rewards = rewards.chunk(2)                         # (B,), (B,)
        margin = torch.tensor([margins[i] for i in idx]) if margins is not None else None

        # 3. the Bradley-Terry loss (InstructGPT Eq. 1; Llama 2 Eq. 2 with a margin)
        loss, accuracy = bradley_terry_loss(chosen_rewards, rejected_rewards, margin)

        # 4. one AdamW step, the gradient clipped to norm 1 (transformers.Trainer's max_grad_norm default)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, "loss": loss.item(), "accuracy": accuracy.item(),
                        "margin": (chosen_rewards - rejected_rewards).mean().item()})
    seconds = time.perf_counter() - start

    metrics = {"train_loss": sum(h["loss"] for h in history) / len(history), "train_seconds": round(seconds, 1),
               "steps": steps, **held_out_metrics(model, tokenizer, eval_data)}
    return TrainResult(model, metrics, history)


# ------------------------------------------------------------------------------ 6. two reward models


def make_attribute_preferences(attribute: str, n: int, seed: int = 0,
                               prompts: list[toyworld.Prompt] | None = None) -> datasets.Dataset:
    """`n` toy-world pairs labelled on one attribute only: "helpful" or "harmless" (or "total").

    Llama 2 trains two reward models, one on helpfulness labels and one on safety labels, because
    the two goals pull apart: the most helpful answer to "how do i steal a bike ?" is the most harmful.
    Pairs whose answers are equally harmless get coin-flip labels (p_chosen = 0.5); the Bayes limit
    shows it.
    """
    labeller = toyworld.Labeller(attribute=attribute)
    return datasets.Dataset.from_list(toyworld.make_preference_pairs(n, seed, labeller=labeller, prompts=prompts))


def whiten(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the batch: (N,) -> (N,)."""
    if rewards.numel() < 2:
        return rewards - rewards.mean()
    return (rewards - rewards.mean()) / (rewards.std() + eps)


def combine_rewards(helpful: torch.Tensor, harmless: torch.Tensor, *, unsafe: torch.Tensor | None = None,
                    safety_threshold: float = 0.15, whiten_rewards: bool = True) -> torch.Tensor:
    """Llama 2's rule for two reward models (arXiv:2307.09288: the two models Sec. 3.2.2, the rule Sec. 3.2.3):

        R_c = R_s  if the prompt is flagged unsafe, or sigmoid(R_s) < safety_threshold
        R_c = R_h  otherwise
        then whiten R_c over the batch.

    helpful (R_h), harmless (R_s): (N,) raw reward-model outputs (logits, before any sigmoid); unsafe:
    (N,) bool, True for prompts known to be unsafe (e.g. `toyworld.parse_prompt(p).harmful`).
    Safety comes first: on a flagged prompt, or when the safety model is fairly sure the answer is
    unsafe (Llama 2's threshold 0.15 on sigmoid(R_s)), only safety counts; everywhere else only
    helpfulness counts, so the safety model does not make benign answers timid. The paper whitens
    logit(R_c), i.e. the raw logit - which is what a reward model outputs here. Note that a
    Bradley-Terry reward is defined only up to a constant, so the threshold means something only if
    the safety model's rewards are centred (`train_reward_model(center_rewards_coefficient=0.01)`).
    Returns (N,).
    """
    assert helpful.shape == harmless.shape and helpful.dim() == 1, \
        f"expected two (N,) tensors, got {tuple(helpful.shape)} and {tuple(harmless.shape)}"
    use_safety = torch.sigmoid(harmless) < safety_threshold                          # (N,) bool
    if unsafe is not None:
        use_safety = use_safety | unsafe.to(torch.bool)
    combined = torch.where(use_safety, harmless, helpful)                            # (N,)
    return whiten(combined) if whiten_rewards else combined


def weighted_sum_rewards(helpful: torch.Tensor, harmless: torch.Tensor, *, helpful_weight: float = 0.5,
                         whiten_rewards: bool = True) -> torch.Tensor:
    """The simple alternative: w * whiten(R_h) + (1 - w) * whiten(R_s). Each model is whitened first so
    that `helpful_weight` means a share, not a fight between two arbitrary scales. Easy, but a very
    helpful answer can buy back an unsafe one - the trade-off Llama 2's rule refuses. Returns (N,)."""
    assert helpful.shape == harmless.shape and helpful.dim() == 1
    h, s = (whiten(helpful), whiten(harmless)) if whiten_rewards else (helpful, harmless)
    return helpful_weight * h + (1 - helpful_weight) * s


def combined_reward_fn(helpful_model, harmless_model, tokenizer, *, safety_threshold: float = 0.15,
                       is_unsafe: Callable[[str], bool] | None = None,
                       batch_size: int = 64) -> RewardFn:
    """`combine_rewards` as a reward function fn(prompts, completions) -> list[float].
    is_unsafe(prompt_text) flags unsafe prompts (default: the toy world's harmful tasks)."""
    def flag(prompt) -> bool:
        text = toyworld.prompt_text(prompt)
        if is_unsafe is not None:
            return is_unsafe(text)
        try:
            return toyworld.parse_prompt(text).harmful
        except KeyError:  # not a toy-world prompt: rely on the safety model alone
            return False

    def fn(prompts: list, completions: list) -> list[float]:
        helpful = score_texts(helpful_model, tokenizer, prompts, completions, batch_size)
        harmless = score_texts(harmless_model, tokenizer, prompts, completions, batch_size)
        unsafe = torch.tensor([flag(p) for p in prompts], dtype=torch.bool)
        return combine_rewards(helpful, harmless, unsafe=unsafe, safety_threshold=safety_threshold).tolist()
    return fn
