"""Supervised fine-tuning with LoRA (or QLoRA): TRL's `SFTTrainer` on demonstrations, loss on the
answer tokens only. The result is merged into a plain model folder, which is the "SFT model" every
later stage starts from (and PPO's and DPO's reference).

The two pieces notebook 3 has students write are here too, as what TRL and peft compute:
`completion_labels` (the completion-only labels of TRL's collator) and `lora_forward` (peft's
`lora.Linear` without dropout)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from rlhf_course.checkpoint_io import trainer_checkpoint_problem
from rlhf_course.errors import RunError
from rlhf_course.loading import keep_trainable_fp32, load_policy, load_tokenizer, lora_config
from rlhf_course.paths import data_path
from rlhf_course.profiles import Profile


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


@dataclass
class TrainResult:
    """What a trainer returns: the trained model, its final metrics and the logged history (for plots)."""

    model: object
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def trl_common_args(profile: Profile, steps: int, out_dir: str | None, progress: bool, seed: int = 0, *,
                    checkpoint_dir: str | Path | None = None, save_every: int | None = None) -> dict:
    """The TrainingArguments every TRL trainer here shares; the profile decides precision and batch.
    With `checkpoint_dir`, Trainer writes `checkpoint-N/` folders there (see `checkpoint_args`)."""
    on_gpu = profile.device == "cuda"
    logging_steps = max(1, steps // 20)
    return dict(
        output_dir=str(checkpoint_dir or out_dir or tempfile.mkdtemp(prefix="rlhf-course-")),
        max_steps=steps,
        per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.gradient_accumulation_steps,
        logging_steps=logging_steps,
        **checkpoint_args(checkpoint_dir, save_every, steps, logging_steps),
        report_to="none",
        seed=seed,
        bf16=on_gpu and profile.compute_dtype.is_floating_point and str(profile.compute_dtype) == "torch.bfloat16",
        fp16=on_gpu and str(profile.compute_dtype) == "torch.float16",
        use_cpu=not on_gpu,
        disable_tqdm=not progress,
        gradient_checkpointing=profile.gradient_checkpointing,
        dataloader_num_workers=0,
    )


# --- checkpoints: Trainer's own mechanism, shared by SFT, the reward model and DPO ---------------

def checkpoint_args(checkpoint_dir, save_every: int | None, steps: int, logging_steps: int) -> dict:
    """Trainer's saving settings. A checkpoint-N/ folder holds the adapter (safetensors), optimizer,
    scheduler, RNG states and trainer_state.json (the step and the log), so a run continues exactly.
    Default: every tenth of the run. Rounded up to a multiple of the logging interval, so the losses
    logged after a resume average the same steps as in an uninterrupted run."""
    if checkpoint_dir is None:
        return dict(save_strategy="no")
    every = save_every or max(1, steps // 10)
    every = -(-every // logging_steps) * logging_steps
    # keep two: the newest may be half-written when a session dies mid-save; `last_checkpoint` skips it
    return dict(save_strategy="steps", save_steps=every, save_only_model=False, save_total_limit=2)


def checkpoint_step_of(folder) -> int:
    """The step N of a Trainer checkpoint folder `checkpoint-N`."""
    return int(Path(folder).name.split("-")[-1])


def trainer_checkpoints(checkpoint_dir) -> list[tuple[Path, str | None]]:
    """Trainer's checkpoint-N folders in `checkpoint_dir`, newest first, each with why it cannot be
    resumed from (None: intact; see checkpoint_io.trainer_checkpoint_problem)."""
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is None or not folder.is_dir():
        return []
    found = [d for d in folder.glob("checkpoint-*") if d.is_dir() and d.name.split("-")[-1].isdigit()]
    return [(d, trainer_checkpoint_problem(d)) for d in sorted(found, key=checkpoint_step_of, reverse=True)]


def last_checkpoint(checkpoint_dir) -> str | None:
    """The newest intact checkpoint-N folder in `checkpoint_dir`, or None. One cut short (Trainer
    writes trainer_state.json last) or with a truncated file is skipped: Trainer keeps two for that."""
    return next((str(d) for d, problem in trainer_checkpoints(checkpoint_dir) if problem is None), None)


def _set_damaged_aside(checkpoint_dir) -> None:
    """Before a resume: move checkpoints newer than the newest intact one to damaged-checkpoint-N
    (Trainer would count them in its rotation and could delete the intact one), and say so."""
    for folder, problem in trainer_checkpoints(checkpoint_dir):
        if problem is None:
            break
        aside = folder.with_name(f"damaged-{folder.name}")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        print(f"{folder}: {problem}; resuming from the checkpoint before it (this one is kept as {aside.name})")


def train_resumable(trainer, checkpoint_dir=None, resume: bool = False):
    """`trainer.train()`, continuing from the last intact checkpoint in `checkpoint_dir` when `resume`
    is asked for and one exists (a first run with resume=True simply starts). Without `resume`, a
    `checkpoint_dir` that already holds checkpoints is refused (RunError), never overwritten.
    Returns Trainer's output with `training_loss` the mean over the whole run: after a resume Trainer
    averages only the steps of this session, so the steps before the checkpoint are added back from
    the restored log."""
    if not resume and trainer_checkpoints(checkpoint_dir):
        raise RunError(f"{checkpoint_dir} holds the checkpoints of another run: pass resume=True (--resume) to "
                       "continue it, or choose another checkpoint folder")
    if resume:
        _set_damaged_aside(checkpoint_dir)
    start = last_checkpoint(checkpoint_dir) if resume else None
    out = trainer.train(resume_from_checkpoint=start)
    if start is None:
        return out
    resumed_at = checkpoint_step_of(start)
    steps = trainer.state.global_step
    before, last = 0.0, 0
    for h in trainer.state.log_history:  # checkpoints sit on logging steps: these intervals are complete
        if "loss" in h and h.get("step", 0) <= resumed_at:
            before, last = before + h["loss"] * (h["step"] - last), h["step"]
    return out._replace(training_loss=(before + out.training_loss * (steps - resumed_at)) / max(steps, 1))


def load_sft_data(path: str | Path | None = None) -> datasets.Dataset:
    """The toy world's demonstrations (conversational prompt/completion), or a JSONL file of them."""
    return datasets.Dataset.from_json(str(path or data_path("toy", "sft.jsonl")))


def train_sft(profile: Profile, dataset: datasets.Dataset | None = None, *, steps: int | None = None,
              learning_rate: float | None = None, load_in_4bit: bool | None = None, model_id: str | None = None,
              out_dir: str | None = None, progress: bool = True, seed: int = 0,
              checkpoint_dir: str | Path | None = None, resume: bool = False, save_every: int | None = None) -> TrainResult:
    """Fine-tune the profile's base model on demonstrations with a LoRA adapter.
    With `checkpoint_dir` (e.g. a Drive folder in Colab) checkpoints are kept there every `save_every`
    steps, and `resume=True` continues from the last one (see `train_resumable`)."""
    tokenizer = load_tokenizer(profile, model_id)
    model = load_policy(profile, lora=False, load_in_4bit=load_in_4bit, model_id=model_id)

    args = SFTConfig(
        **trl_common_args(profile, steps or profile.sft_steps, out_dir, progress, seed,
                          checkpoint_dir=checkpoint_dir, save_every=save_every),
        learning_rate=learning_rate or profile.recipe.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, (steps or profile.sft_steps) // 10),
        max_length=profile.max_length,
        completion_only_loss=True,  # learn to answer, not to ask: no loss on the prompt tokens
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset or load_sft_data(),
                         processing_class=tokenizer, peft_config=lora_config(profile))
    if not progress:
        trainer.remove_callback(PrinterCallback)  # without a progress bar, Trainer prints every log line
    keep_trainable_fp32(trainer.model, profile)
    out = train_resumable(trainer, checkpoint_dir, resume)
    history = [h for h in trainer.state.log_history if "loss" in h]
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
