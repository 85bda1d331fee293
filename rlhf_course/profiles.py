"""Hardware detection and the two profiles: `tiny` (any CPU) and `7b` (a CUDA GPU with >= 14 GiB).

A profile fixes every number that differs between a laptop and a Colab T4: which model, 4-bit or
not, compute dtype, LoRA targets, lengths, batch sizes and steps. Notebooks and trainers read
them from here, so the same cell runs at both scales.

    profile = pick_profile()            # auto: 7b on a big enough CUDA GPU, else tiny
    profile = pick_profile("tiny")      # or RLHF_COURSE_PROFILE=tiny in the environment

    # the 7b profile's code on a CPU, with a small stand-in of the 7B (CI, and trying before Colab):
    RLHF_COURSE_PROFILE=7b RLHF_COURSE_REHEARSAL=runs/standin python ...   # after `rlhf-course build-standin --out runs/standin`
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from rlhf_course.errors import CourseError
from rlhf_course.paths import data_path

PROFILE_ENV = "RLHF_COURSE_PROFILE"
MIN_GPU_GIB_FOR_7B = 14.0  # a T4 reports 14.7 GiB; 7B in 4-bit with QLoRA peaks near 13 GB
TINY_MODEL = "tiny"        # the local folder data/tiny (the course's own model)
MODEL_7B = "HuggingFaceH4/zephyr-7b-beta"  # a Mistral-7B chat fine-tune; ungated, Apache-2.0
# The 7b profile's independent judge: a 0.6B Bradley-Terry reward model (Qwen3 architecture), ungated,
# Apache-2.0, about 1.2 GB in 16-bit; it never trains, so it cannot be what the policy over-optimises.
JUDGE_7B = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
PREFERENCE_SET_7B = "HuggingFaceH4/ultrafeedback_binarized"  # what Zephyr's DPO used; MIT licence
REHEARSAL_ENV = "RLHF_COURSE_REHEARSAL"  # a stand-in folder: run the 7b profile's code on a CPU
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ProfileError(CourseError, ValueError):
    """A profile that cannot run here (e.g. `7b` without a GPU); the message says what to do."""


@dataclass(frozen=True)
class Hardware:
    """What this machine offers for training."""

    device: str                   # "cuda" or "cpu"
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    bf16: bool = False            # the GPU computes in bfloat16 natively (Ampere or newer; a T4 only emulates it)
    n_gpus: int = 0
    cpu_count: int = 1

    def describe(self) -> str:
        if self.device == "cuda":
            return (f"{self.n_gpus} x CUDA GPU '{self.gpu_name}' with {self.gpu_memory_gib:.1f} GiB, "
                    f"bf16 {'yes' if self.bf16 else 'no'}; {self.cpu_count} CPU cores")
        return f"no CUDA GPU; {self.cpu_count} CPU cores"


def detect_hardware() -> Hardware:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not torch.cuda.is_available():
        return Hardware("cpu", cpu_count=cpus)
    props = torch.cuda.get_device_properties(0)
    # Native bf16 only: by default `is_bf16_supported()` also counts emulation, and a T4 (sm_75) says
    # True - then every matmul runs in slow emulated bf16 and the fp16 path built for the T4 is never used.
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return Hardware("cuda", props.name, props.total_memory / 2**30, native_bf16, torch.cuda.device_count(), cpus)


@dataclass(frozen=True)
class Recipe:
    """Each stage's hyperparameters at one scale. Trainers take their defaults from here, so no
    tiny-model learning rate ever reaches a 7B. tiny: measured on the toy world (see the README's
    numbers); 7b: published QLoRA/TRL recipes for a Mistral-7B chat model (sources per field)."""

    # SFT with LoRA
    sft_learning_rate: float        # 7b: alignment-handbook zephyr-7b-beta sft/config_qlora.yaml (2e-4)
    # reward model (Bradley-Terry, LoRA + score head)
    rm_learning_rate: float         # 7b: TRL's RewardConfig default and its LoRA example (1e-4)
    # PPO (ours)
    ppo_learning_rate: float        # 7b: TRL's StackLLaMA RL script, LoRA on a quantized 7B (1.41e-5)
    ppo_kl_coef: float              # beta of the per-token KL penalty; 7b: StackLLaMA's init_kl_coef (0.2)
    # DPO (TRL's DPOTrainer)
    dpo_learning_rate: float        # 7b: alignment-handbook zephyr-7b-beta dpo/config_qlora.yaml (5e-6)
    dpo_beta: float                 # 7b: the same recipe (0.01)
    online_dpo_beta: float          # DPO on pairs the policy itself sampled, round after round (the iterative loop)
    # GRPO / RLOO (TRL), notebook 2's REINFORCE, and rejection-sampling fine-tuning
    grpo_learning_rate: float       # 7b: TRL's GRPO-with-LoRA cookbook (1e-5)
    grpo_beta: float                # KL weight in GRPO's loss: DeepSeekMath Sec. 4.2 (0.04)
    pg_learning_rate: float         # notebook 2's hand-written REINFORCE on the LoRA adapter


TINY_RECIPE = Recipe(
    sft_learning_rate=3e-3, rm_learning_rate=3e-3,
    # kl_coef 0.2: at 0.05 the tiny reward model is over-optimised (its score keeps rising while the
    # ground truth peaks near iteration 30 and falls, KL ~7 nats after 100 iterations); measured on the
    # shipped SFT model and reward model: 0.1 -> ground truth 0.51 at KL 3.4, 0.2 -> 0.52 at KL 2.1.
    ppo_learning_rate=5e-4, ppo_kl_coef=0.2,
    # beta 1: a small beta (0.1) with a learning rate high enough to move in 60 steps pushes the tiny
    # model off its distribution (garbled sentences); beta 1 stops once the log-ratio gap is a few nats.
    # Over three paired seeds (benchmarks/learning_levers.md) beta 1 beats beta 2 at every seed: win rate vs
    # SFT 0.616 +- 0.006 against 0.580 +- 0.013 (KL 0.8 vs 0.35 nats); beta 0.5 gains nothing at ten times the KL.
    # On-policy rounds keep beta 2: at beta 1 the iterative loop's second round lost ground (ground truth
    # 0.35 -> 0.51 -> 0.38, against 0.49 -> 0.49 at beta 2), and DPO on reward-model labels drifted to twice
    # the KL (offline 6.4 nats, online 15; benchmarks/methods_table.py, 3 seeds).
    dpo_learning_rate=3e-3, dpo_beta=1.0, online_dpo_beta=2.0,
    grpo_learning_rate=3e-3, grpo_beta=0.04, pg_learning_rate=1e-3,
)
RECIPE_7B = Recipe(
    sft_learning_rate=2e-4, rm_learning_rate=1e-4,
    ppo_learning_rate=1.41e-5, ppo_kl_coef=0.2,
    dpo_learning_rate=5e-6, dpo_beta=0.01, online_dpo_beta=0.01,
    grpo_learning_rate=1e-5, grpo_beta=0.04, pg_learning_rate=1e-5,
)


@dataclass(frozen=True)
class Profile:
    """Every number that differs between the tiny and the 7b run. Derived from the hardware."""

    name: str
    reason: str                     # one line: why this profile and these settings
    device: str
    # model and loading
    model_id: str                   # a Hub id, or "tiny" for the course's own model in data/tiny
    load_in_4bit: bool              # NF4 + double quantisation (QLoRA, Dettmers et al. 2023)
    compute_dtype: torch.dtype      # the dtype matmuls run in: bf16 if the GPU has it, fp16 on a T4, fp32 on CPU
    gradient_checkpointing: bool
    recipe: Recipe = TINY_RECIPE    # learning rates, DPO beta, PPO kl_coef per stage
    # LoRA: the same module names on the tiny Llama and on Mistral-7B
    lora_target_modules: tuple[str, ...] = LORA_TARGETS
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # lengths (tokens) and sampling
    max_prompt_length: int = 32
    max_new_tokens: int = 64
    temperature: float = 0.7        # for rollouts, evaluation and best-of-N: keeps a small model's rare slips out
    # batches and steps, per stage
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    sft_steps: int = 200
    rm_steps: int = 300
    ppo_steps: int = 100            # PPO iterations (rollout + optimisation)
    dpo_steps: int = 60
    eval_samples: int = 160
    # data (7b): a real preference set from the Hub, a slice sized to the GPU (see preference_sets.py)
    preference_set: str | None = None   # None: the toy world's generated pairs
    preference_pairs: int = 0           # how many pairs to take from it
    # capabilities: what this scale of the course can measure and hold
    has_ground_truth: bool = True   # the toy world's exact reward judges answers (tiny model only)
    judge_model_id: str | None = None   # without a ground truth: an independent reward model scores answers
    one_base_at_a_time: bool = False    # a second 4-bit base would not fit: the loader refuses to load one
    rehearsal: bool = False         # the 7b profile's code on a CPU with a small stand-in model (CI)

    @property
    def max_length(self) -> int:
        return self.max_prompt_length + self.max_new_tokens

    @property
    def model_path(self) -> str:
        """What to pass to `from_pretrained`: the local folder for the tiny model, else the Hub id."""
        return str(data_path("tiny")) if self.model_id == TINY_MODEL else self.model_id

    def replace(self, **changes) -> "Profile":
        """A copy with some numbers changed, e.g. `profile.replace(ppo_steps=10)`."""
        return dataclasses.replace(self, **changes)


def _compute_dtype(hw: Hardware) -> tuple[torch.dtype, str]:
    if hw.device != "cuda":
        return torch.float32, "fp32 on CPU"
    if hw.bf16:
        return torch.bfloat16, "bf16 (native on this GPU)"
    # A T4 (Turing) has no native bf16. fp16 has a narrow range: keep the trained weights (LoRA, heads)
    # in fp32, compute log-probs and losses in fp32, and scale the loss (fp16 mixed precision).
    return torch.float16, "fp16 (this GPU has no bf16 natively, e.g. a T4; LoRA weights stay fp32, and the heads)"


def tiny_profile(hw: Hardware, reason: str) -> Profile:
    return Profile(
        name="tiny", reason=reason, device=hw.device, model_id=TINY_MODEL, load_in_4bit=False,
        compute_dtype=torch.float32, gradient_checkpointing=False,
    )


def profile_7b(hw: Hardware, reason: str) -> Profile:
    dtype, why = _compute_dtype(hw)
    return Profile(
        name="7b", reason=f"{reason}; compute {why}", device=hw.device, model_id=MODEL_7B,
        load_in_4bit=True, compute_dtype=dtype, gradient_checkpointing=True, recipe=RECIPE_7B,
        # r 16, alpha 16, dropout 0.05 on every linear layer: alignment-handbook's zephyr QLoRA recipes
        lora_r=16, lora_alpha=16, lora_dropout=0.05,
        max_prompt_length=256, max_new_tokens=128,
        batch_size=4, gradient_accumulation_steps=4,
        sft_steps=100, rm_steps=100, ppo_steps=20, dpo_steps=100, eval_samples=32,
        preference_set=PREFERENCE_SET_7B, preference_pairs=2000,
        has_ground_truth=False,  # a 7B answers in free text: an independent judge model scores it
        judge_model_id=JUDGE_7B, one_base_at_a_time=True,
    )


def rehearsal_profile(standin_dir: str | os.PathLike, reason: str = "rehearsal") -> Profile:
    """The 7b profile's code at rehearsal sizes on this machine's CPU, with the stand-in built by
    `rlhf-course build-standin --out DIR` (Mistral-7B's architecture shrunk, random weights, the real
    Mistral tokenizer with Zephyr's chat template; a small stand-in judge). Every 7b code path runs -
    4-bit loading, stacked adapters, one base at a time, the judge - in minutes; the numbers mean nothing."""
    from pathlib import Path

    folder = Path(standin_dir)
    if not (folder / "model" / "config.json").is_file():
        raise ProfileError(f"{folder}: no stand-in model here (model/config.json); build one with "
                           f"`rlhf-course build-standin --out {folder}`")
    hw = detect_hardware()
    full = profile_7b(hw, reason)
    return full.replace(
        reason=f"7b rehearsal on {hw.describe()}: stand-in model {folder / 'model'}, fp32 compute",
        device="cpu", compute_dtype=torch.float32, model_id=str(folder / "model"),
        judge_model_id=str(folder / "judge"), preference_pairs=64,  # offline: the hand-written set
        max_prompt_length=128, max_new_tokens=32, batch_size=4, gradient_accumulation_steps=1,
        sft_steps=2, rm_steps=2, ppo_steps=2, dpo_steps=2, eval_samples=4, rehearsal=True,
    )


PROFILES = {"tiny": tiny_profile, "7b": profile_7b}


def pick_profile(name: str | None = None, hardware: Hardware | None = None, *,
                 tiny_advice: str = "pass profile='tiny'") -> Profile:
    """The profile to run: `name` if given, else $RLHF_COURSE_PROFILE, else chosen from the hardware.
    `tiny_advice` is how the caller's user picks the tiny profile, for the error when `name` cannot run
    here (the command line passes "pass --profile tiny")."""
    hw = hardware or detect_hardware()
    requested = name or os.environ.get(PROFILE_ENV) or None
    if requested is not None:
        requested = requested.strip().lower()
        if requested not in PROFILES:
            raise ProfileError(f"unknown profile {requested!r}: choose one of {', '.join(PROFILES)}")
        source = "asked for by argument" if name else f"asked for by ${PROFILE_ENV}"
        if requested == "7b" and os.environ.get(REHEARSAL_ENV):
            return rehearsal_profile(os.environ[REHEARSAL_ENV], f"7b: {source}, ${REHEARSAL_ENV} set")
        if requested == "7b" and hw.device != "cuda":
            advice = tiny_advice if name else f"unset {PROFILE_ENV} (or set it to tiny)"
            raise ProfileError(
                f"the 7b profile needs a CUDA GPU with at least {MIN_GPU_GIB_FOR_7B:.0f} GiB, and this machine has "
                f"none ({source}). Use the tiny profile: {advice}. "
                "In Colab: Runtime > Change runtime type > T4 GPU."
            )
        reason = f"{requested}: {source}; {hw.describe()}"
        if requested == "7b" and (hw.gpu_memory_gib or 0) < MIN_GPU_GIB_FOR_7B:
            reason += f" - less than the {MIN_GPU_GIB_FOR_7B:.0f} GiB the 7b profile needs: expect out-of-memory"
        return PROFILES[requested](hw, reason)
    if hw.device == "cuda" and (hw.gpu_memory_gib or 0) >= MIN_GPU_GIB_FOR_7B:
        return profile_7b(hw, f"7b: auto, {hw.describe()} (>= {MIN_GPU_GIB_FOR_7B:.0f} GiB)")
    if hw.device == "cuda":
        return tiny_profile(hw, f"tiny: auto, the GPU has {hw.gpu_memory_gib:.1f} GiB "
                                f"(< {MIN_GPU_GIB_FOR_7B:.0f} GiB needed for 7b)")
    return tiny_profile(hw, f"tiny: auto, {hw.describe()}")
