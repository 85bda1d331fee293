"""Hardware detection and the two profiles: `tiny` (any CPU) and `7b` (a CUDA GPU with >= 14 GiB).

A profile fixes every number that differs between a laptop and a Colab T4: which model, 4-bit or
not, compute dtype, LoRA targets, lengths, batch sizes and steps. Notebooks and trainers read
them from here, so the same cell runs at both scales.

    profile = pick_profile()            # auto: 7b on a big enough CUDA GPU, else tiny
    profile = pick_profile("tiny")      # or RLHF_COURSE_PROFILE=tiny in the environment
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
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ProfileError(CourseError, ValueError):
    """A profile that cannot run here (e.g. `7b` without a GPU); the message says what to do."""


@dataclass(frozen=True)
class Hardware:
    """What this machine offers for training."""

    device: str                   # "cuda" or "cpu"
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    bf16: bool = False            # the GPU computes in bfloat16 (Ampere or newer; a T4 cannot)
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
    return Hardware("cuda", props.name, props.total_memory / 2**30, torch.cuda.is_bf16_supported(),
                    torch.cuda.device_count(), cpus)


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
    # capabilities: what this scale of the course can measure
    has_ground_truth: bool = True   # the toy world's exact reward judges answers (tiny model only)

    @property
    def max_length(self) -> int:
        return self.max_prompt_length + self.max_new_tokens

    @property
    def model_path(self) -> str:
        """What to pass to `from_pretrained`: the local folder for the tiny model, else the Hub id."""
        return str(data_path("tiny")) if self.model_id == TINY_MODEL else self.model_id

    @property
    def is_7b(self) -> bool:
        return self.name == "7b"

    def replace(self, **changes) -> "Profile":
        """A copy with some numbers changed, e.g. `profile.replace(ppo_steps=10)`."""
        return dataclasses.replace(self, **changes)


def _compute_dtype(hw: Hardware) -> tuple[torch.dtype, str]:
    if hw.device != "cuda":
        return torch.float32, "fp32 on CPU"
    if hw.bf16:
        return torch.bfloat16, "bf16 (supported by this GPU)"
    # A T4 (Turing) has no bf16. fp16 has a narrow range: keep LoRA weights in fp32 and use loss scaling.
    return torch.float16, "fp16 (this GPU has no bf16, e.g. a T4; LoRA weights stay fp32)"


def tiny_profile(hw: Hardware, reason: str) -> Profile:
    return Profile(
        name="tiny", reason=reason, device=hw.device, model_id=TINY_MODEL, load_in_4bit=False,
        compute_dtype=torch.float32, gradient_checkpointing=False,
    )


def profile_7b(hw: Hardware, reason: str) -> Profile:
    dtype, why = _compute_dtype(hw)
    return Profile(
        name="7b", reason=f"{reason}; compute {why}", device=hw.device, model_id=MODEL_7B,
        load_in_4bit=True, compute_dtype=dtype, gradient_checkpointing=True,
        lora_r=16, lora_alpha=32, lora_dropout=0.05,
        max_prompt_length=256, max_new_tokens=128,
        batch_size=4, gradient_accumulation_steps=4,
        sft_steps=100, rm_steps=100, ppo_steps=20, dpo_steps=100, eval_samples=32,
        has_ground_truth=False,  # a 7B answers in free text: an independent judge model scores it
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
