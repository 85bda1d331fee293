"""Supervised fine-tuning with LoRA (or QLoRA): TRL's `SFTTrainer` on demonstrations, loss on the
answer tokens only. The result is the "SFT model" every later stage starts from (and PPO's and DPO's
reference): on a full-precision base the adapter merged into a plain model folder, on a 4-bit base the
adapter folder itself (`save_sft_model`).

The two pieces notebook 3 has students write are here too, as what TRL and peft compute:
`completion_labels` (the completion-only labels of TRL's collator) and `lora_forward` (peft's
`lora.Linear` without dropout)."""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
from trl import SFTConfig, SFTTrainer

from rlhf_course.loading import load_tokenizer, policy_for_trainer
from rlhf_course.paths import data_path
from rlhf_course.profiles import Profile
from rlhf_course.training import TrainResult, run_trl_trainer, steps_or_default, trl_common_args


IGNORE_INDEX = -100  # the label cross_entropy skips (and Hugging Face causal LMs with it)


def completion_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_lengths: torch.Tensor) -> torch.Tensor:
    """Labels of the completion-only SFT loss, as TRL's collator builds them: input_ids with IGNORE_INDEX on
    each row's first prompt_lengths[i] tokens and on the padding, found by position (attention_mask 0), never
    by token id - the pad token may be the end-of-turn token, which the model must learn. Not shifted (the
    model shifts labels inside its loss). input_ids, attention_mask: (B, T) right-padded; prompt_lengths: (B,)."""
    T = input_ids.shape[1]
    is_prompt = torch.arange(T, device=input_ids.device)[None, :] < prompt_lengths[:, None]   # (B, T)
    return input_ids.masked_fill(is_prompt | (attention_mask == 0), IGNORE_INDEX)                # a new tensor


def lora_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float,
                 r: int) -> torch.Tensor:
    """A LoRA linear layer, h = x W^T + (alpha / r) x A^T B^T (Hu et al. 2021, arXiv:2106.09685, Eq. 3), as
    peft's `lora.Linear` computes it without bias or dropout. x: (..., in); W: (out, in); A: (r, in);
    B: (out, r). Returns (..., out). x A^T first: the (out, in) matrix B A is never built."""
    return x @ W.T + (alpha / r) * ((x @ A.T) @ B.T)


def load_sft_data(path: str | Path | None = None) -> datasets.Dataset:
    """The toy world's demonstrations (conversational prompt/completion), or a JSONL file of them."""
    return datasets.Dataset.from_json(str(path or data_path("toy", "sft.jsonl")))


def train_sft(profile: Profile, dataset: datasets.Dataset | None = None, *, steps: int | None = None,
              learning_rate: float | None = None, load_in_4bit: bool | None = None, model_id: str | None = None,
              out_dir: str | None = None, progress: bool = True, seed: int = 0,
              checkpoint_dir: str | Path | None = None, resume: bool = False, save_every: int | None = None) -> TrainResult:
    """Fine-tune the profile's base model on demonstrations with a LoRA adapter (the profile's recipe:
    `profile.recipe.sft_learning_rate`, `profile.sft_steps`). `model_id`: another model, or an adapter
    folder (e.g. the SFT adapter of a 4-bit base), whose adapter training then continues.
    With `checkpoint_dir` (e.g. a Drive folder in Colab) checkpoints are kept there every `save_every`
    steps, and `resume=True` continues from the last one (see `training.train_resumable`)."""
    steps = steps_or_default(steps, profile.sft_steps)
    tokenizer = load_tokenizer(profile, model_id)
    model, peft_config = policy_for_trainer(profile, model_id, load_in_4bit, verbose=progress)  # fresh LoRA, or the folder's
    args = SFTConfig(
        **trl_common_args(profile, steps, out_dir, progress, seed, checkpoint_dir=checkpoint_dir, save_every=save_every),
        learning_rate=learning_rate or profile.recipe.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        max_length=profile.max_length,
        completion_only_loss=True,  # learn to answer, not to ask: no loss on the prompt tokens
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset or load_sft_data(),
                         processing_class=tokenizer, peft_config=peft_config)
    out, history = run_trl_trainer(trainer, profile, progress=progress, desc="SFT", checkpoint_dir=checkpoint_dir,
                                   resume=resume, keep_bf16_adapters=True)
    return TrainResult(trainer.model, {"train_loss": out.training_loss}, history)


def save_sft_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Save the SFT model where every later stage starts: on a full-precision base, the adapter merged in
    (a plain model folder); on a 4-bit base, which cannot take it in, the adapter itself (a folder with
    adapter_config.json, and the tokenizer) - every loader in `loading` accepts either."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "is_loaded_in_4bit", False):
        return save_merged(model, tokenizer, out_dir)
    out = Path(out_dir)
    model.save_pretrained(out, selected_adapters=["default"])  # safetensors
    tokenizer.save_pretrained(out)
    return out


def save_merged(model, tokenizer, out_dir: str | Path) -> Path:
    """Fold the LoRA adapter into the base weights and save a plain model folder (the SFT model).
    Only for full-precision bases: a 4-bit base keeps its adapter separate (`model.save_pretrained`)."""
    out = Path(out_dir)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(out)
    return out
