"""Training machinery every trainer shares (lesson modules hold the lessons; this holds the plumbing):
what a trainer returns, the TrainingArguments of every TRL trainer here, Trainer's checkpoints and resume,
and `run_trl_trainer`, the one recipe that runs a TRL trainer the course's way:

    1. one progress bar per stage, its loss on the bar (no log dicts printed between bars);
    2. trained weights kept fp32 where the GPU has no native bf16 (TRL casts QLoRA adapters to bf16,
       which a T4 cannot train: `loading.keep_trainable_fp32`);
    3. checkpoints and resume (`train_resumable`), never overwriting another run's;
    4. the log as `history` (one dict per logging step), for plots.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging

from rlhf_course import tracking
from rlhf_course.checkpoint_io import trainer_checkpoint_problem
from rlhf_course.errors import RunError, UsageError
from rlhf_course.loading import keep_trainable_fp32
from rlhf_course.profiles import Profile


def steps_or_default(steps: int | None, default: int, what: str = "steps") -> int:
    """`steps`, or the profile's `default` when None; fewer than one step is an error, never the default."""
    if steps is None:
        return default
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"{what} must be a whole number of at least 1, got {steps!r}")
    return steps


@dataclass
class TrainResult:
    """What a trainer returns: the trained model, its final metrics and the logged history (for plots)."""

    model: object
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def trl_common_args(profile: Profile, steps: int, out_dir: str | None, progress: bool, seed: int = 0, *,
                    checkpoint_dir: str | Path | None = None, save_every: int | None = None,
                    report_to: str | None = None) -> dict:
    """The TrainingArguments every TRL trainer here shares; the profile decides precision and batch.
    With `checkpoint_dir`, Trainer writes `checkpoint-N/` folders there (see `checkpoint_args`).
    report_to: "tensorboard" or "trackio" for the curves too (default: $RLHF_COURSE_REPORT_TO, else none;
    see `tracking`). TensorBoard's files go to tracking.log_dir(run name): Trainer takes that folder from
    $TENSORBOARD_LOGGING_DIR, which is set here for the trainer about to be built."""
    on_gpu = profile.device == "cuda"
    logging_steps = max(1, steps // 20)
    choice = tracking.report_to(report_to)
    name = tracking.run_name(Path(out_dir).name if out_dir else "trl")
    if choice == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(tracking.log_dir(name))
    return dict(
        output_dir=str(checkpoint_dir or out_dir or tempfile.mkdtemp(prefix="rlhf-course-")),
        max_steps=steps,
        per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.gradient_accumulation_steps,
        logging_steps=logging_steps,
        **checkpoint_args(checkpoint_dir, save_every, steps, logging_steps),
        report_to=choice,
        run_name=name,
        project=tracking.PROJECT,  # trackio's project (only trackio reads it)
        seed=seed,
        bf16=on_gpu and profile.compute_dtype.is_floating_point and str(profile.compute_dtype) == "torch.bfloat16",
        fp16=on_gpu and str(profile.compute_dtype) == "torch.float16",
        use_cpu=not on_gpu,
        disable_tqdm=not progress,
        activation_checkpointing=profile.gradient_checkpointing,
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


# --- one recipe for every TRL trainer -----------------------------------------------------------

class StageProgress(ProgressCallback):
    """Trainer's progress bar, named for its stage, with the latest loss on the bar instead of a log dict
    printed under it."""

    def __init__(self, desc: str):
        super().__init__()
        self.desc = desc

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.desc)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)


def run_trl_trainer(trainer, profile: Profile, *, progress: bool, desc: str, checkpoint_dir=None, resume: bool = False,
                    keep_bf16_adapters: bool = False, history_key: str = "loss"):
    """Train a TRL trainer the course's way (the numbered details of the module's docstring). Returns
    (Trainer's output, history: the logged rows that hold `history_key`).
    keep_bf16_adapters: on a native-bf16 GPU keep TRL's bf16 QLoRA adapters (SFT and DPO: half the
    optimizer memory); otherwise, and always on a T4 or a CPU, trained weights are fp32."""
    trainer.remove_callback(PrinterCallback)  # it prints every log dict
    if trainer.pop_callback(ProgressCallback) is not None and progress:
        trainer.add_callback(StageProgress(desc))
    keep_trainable_fp32(trainer.model, profile if keep_bf16_adapters else None)
    out = train_resumable(trainer, checkpoint_dir, resume)
    return out, [h for h in trainer.state.log_history if history_key in h]


def quiet_datasets():
    """datasets' and transformers' own progress bars (tokenizing, loading weights) off: one bar per stage."""
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
