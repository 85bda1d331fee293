"""Supervised fine-tuning with LoRA (or QLoRA): TRL's `SFTTrainer` on demonstrations, loss on the
answer tokens only. The result is merged into a plain model folder, which is the "SFT model" every
later stage starts from (and PPO's and DPO's reference)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from trl import SFTConfig, SFTTrainer

from rlhf_course.loading import load_policy, load_tokenizer, lora_config
from rlhf_course.paths import data_path
from rlhf_course.profiles import Profile


@dataclass
class TrainResult:
    """What a trainer returns: the trained model, its final metrics and the logged history (for plots)."""

    model: object
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def trl_common_args(profile: Profile, steps: int, out_dir: str | None, progress: bool, seed: int = 0) -> dict:
    """The TrainingArguments every TRL trainer here shares; the profile decides precision and batch."""
    on_gpu = profile.device == "cuda"
    return dict(
        output_dir=out_dir or tempfile.mkdtemp(prefix="rlhf-course-"),
        max_steps=steps,
        per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.gradient_accumulation_steps,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=on_gpu and profile.compute_dtype.is_floating_point and str(profile.compute_dtype) == "torch.bfloat16",
        fp16=on_gpu and str(profile.compute_dtype) == "torch.float16",
        use_cpu=not on_gpu,
        disable_tqdm=not progress,
        gradient_checkpointing=profile.gradient_checkpointing,
        dataloader_num_workers=0,
    )


def load_sft_data(path: str | Path | None = None) -> datasets.Dataset:
    """The toy world's demonstrations (conversational prompt/completion), or a JSONL file of them."""
    return datasets.Dataset.from_json(str(path or data_path("toy", "sft.jsonl")))


def train_sft(profile: Profile, dataset: datasets.Dataset | None = None, *, steps: int | None = None,
              learning_rate: float = 3e-3, load_in_4bit: bool | None = None, model_id: str | None = None,
              out_dir: str | None = None, progress: bool = True, seed: int = 0) -> TrainResult:
    """Fine-tune the profile's base model on demonstrations with a LoRA adapter."""
    tokenizer = load_tokenizer(profile, model_id)
    model = load_policy(profile, lora=False, load_in_4bit=load_in_4bit, model_id=model_id)

    args = SFTConfig(
        **trl_common_args(profile, steps or profile.sft_steps, out_dir, progress, seed),
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, (steps or profile.sft_steps) // 10),
        max_length=profile.max_length,
        completion_only_loss=True,  # learn to answer, not to ask: no loss on the prompt tokens
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset or load_sft_data(),
                         processing_class=tokenizer, peft_config=lora_config(profile))
    out = trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    return TrainResult(trainer.model, {"train_loss": out.training_loss}, history)


def save_merged(model, tokenizer, out_dir: str | Path) -> Path:
    """Fold the LoRA adapter into the base weights and save a plain model folder (the SFT model).
    Only for full-precision bases: a 4-bit base keeps its adapter separate (`model.save_pretrained`)."""
    out = Path(out_dir)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
