"""`rlhf-course gpu-check`: the 7b profile's stages on a real GPU, with a T4's memory and precision.

    rlhf-course gpu-check --out gpu_check.json          # any CUDA GPU, no Hub access needed (~5 min)
    rlhf-course gpu-check --standin                     # the same code on a CPU, with the stand-in

On a CUDA machine it builds Mistral-7B v0.1 from its published config with *random weights* (memory and
speed do not depend on the values; nothing is downloaded), caps this process to a T4's 15 GB
(`torch.cuda.set_per_process_memory_fraction`) and forces fp16 compute, as on a T4 - whatever the card.
Then it runs a few steps of each stage exactly as the 7b profile does - QLoRA SFT, the reward model (its
LoRA started from the SFT adapter), PPO (the reward model as a second adapter on the policy's base),
DPO and GRPO (both continuing the SFT adapter) - one 4-bit base at a time, every sequence at the
profile's full lengths, and prints per stage: peak allocated and reserved GiB, seconds per step,
generation tokens per second, and `rlhf-course memory`'s estimate with the ratio measured/estimate.

A faster or larger card is not a T4: its seconds are not a T4's (a T4 is roughly 5-10x slower than an
H100 here), but its memory under the cap and fp16 is. `--standin` runs the same stages on the CPU with
the stand-in of `standin.py` (CI does, so this command is not untested code); memory is then not measured.
"""

from __future__ import annotations

import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import datasets
import torch

from rlhf_course import gpu_memory
from rlhf_course.loading import free_memory, live_4bit_bases, load_policy, load_tokenizer
from rlhf_course.profiles import Hardware, Profile, profile_7b, rehearsal_profile
from rlhf_course.sampling import generate
from rlhf_course.standin import build_standin, build_tokenizer, mistral_7b_config

T4_GIB = 15.0           # a Colab T4: 15 GB of memory (14.7 GiB as torch reports it)
STAGES = ("sft", "rm", "generate", "ppo", "dpo", "grpo")
PLANNED = {"sft": "sft", "rm": "rm", "ppo": "ppo", "dpo": "dpo"}  # stages `rlhf-course memory` estimates


def build_random_7b(folder: Path) -> Path:
    """Mistral-7B v0.1 with random weights, fp16 safetensors, and the real Mistral tokenizer with Zephyr's
    chat template (built on the GPU: initialising 7B parameters on a CPU takes minutes)."""
    from transformers import AutoModelForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tokenizer(folder)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(mistral_7b_config(pad_token_id=tokenizer.pad_token_id),
                                                 dtype=torch.float16)
    model.save_pretrained(folder)
    del model
    free_memory()
    return folder


def full_length_data(profile: Profile, tokenizer, n: int = 64) -> datasets.Dataset:
    """Preference pairs whose prompt and answers fill max_prompt_length and max_new_tokens (the worst case
    a batch can be), cut to exact token counts of the profile's tokenizer."""
    ids = tokenizer(" ".join(["the quick brown fox jumps over the lazy dog and runs back home"] * 60),
                    add_special_tokens=False)["input_ids"]

    def text(tokens: int, i: int) -> str:
        return tokenizer.decode(ids[i : i + max(1, tokens)])

    # the chat template takes about 16 tokens around the prompt and 8 around the answer
    prompt, answer = profile.max_prompt_length - 16, profile.max_new_tokens - 8
    return datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": text(prompt, i)}],
         "chosen": [{"role": "assistant", "content": text(answer, i + 1)}],
         "rejected": [{"role": "assistant", "content": text(answer, i + 2)}]} for i in range(n)])


def _length_reward(prompts, completions) -> list[float]:
    """GRPO's reward here: any cheap function of the answer (the memory and speed do not depend on it)."""
    return [len(c.text) / 100 for c in completions]


def run_stage(stage: str, profile: Profile, data: datasets.Dataset, work: Path, steps: int) -> dict:
    """One stage, timed; returns seconds per step (and generation tokens per second)."""
    from rlhf_course.dpo import train_dpo
    from rlhf_course.grpo import train_grpo
    from rlhf_course.ppo import train_ppo
    from rlhf_course.reward_model import train_reward_model
    from rlhf_course.sft import save_sft_model, train_sft

    sft_dir, rm_dir = work / "sft", work / "rm"
    prompts = list(data["prompt"])
    t0 = time.perf_counter()
    out = {}
    if stage == "sft":
        rows = data.map(lambda r: {"completion": r["chosen"]}, remove_columns=["chosen", "rejected"])
        result = train_sft(profile, rows, steps=steps, progress=False)
        out["seconds_per_step"] = (time.perf_counter() - t0) / steps
        save_sft_model(result.model, load_tokenizer(profile), sft_dir)
    elif stage == "rm":
        result = train_reward_model(profile, data, data.select(range(4)), model_id=str(sft_dir), steps=steps,
                                    out_dir=str(rm_dir), progress=False)
        out["seconds_per_step"] = (time.perf_counter() - t0) / steps
    elif stage == "generate":
        tokenizer = load_tokenizer(profile, str(sft_dir))
        result = load_policy(profile, model_id=str(sft_dir), lora=False, verbose=False)
        t0 = time.perf_counter()
        answers = generate(result, tokenizer, prompts[: profile.batch_size], profile.max_new_tokens,
                           batch_size=profile.batch_size, temperature=profile.temperature, seed=0)
        out["generation_tokens_per_s"] = sum(a.n_tokens for a in answers) / (time.perf_counter() - t0)
    elif stage == "ppo":
        result = train_ppo(profile, model_id=str(sft_dir), reward_model_dir=rm_dir, prompts=prompts, steps=steps,
                           progress=False)
        out["seconds_per_step"] = (time.perf_counter() - t0) / steps
        rollout = [h["time/rollout"] for h in result.history]
        lengths = [h["rollout/length"] * profile.batch_size for h in result.history]
        out["rollout_tokens_per_s"] = sum(lengths) / sum(rollout)  # generation + scoring, per sampled token
    elif stage == "dpo":
        result = train_dpo(profile, data, model_id=str(sft_dir), steps=steps, progress=False)
        out["seconds_per_step"] = (time.perf_counter() - t0) / steps
    else:
        result = train_grpo(profile, reward_fn=_length_reward, model_id=str(sft_dir), prompts=prompts, steps=steps,
                            num_generations=profile.batch_size, progress=False)
        out["seconds_per_step"] = (time.perf_counter() - t0) / steps
    del result
    return out


def check(out: str | Path | None = None, *, standin: bool = False, steps: int = 3, cap_gib: float = T4_GIB,
          workdir: str | Path | None = None, stages=STAGES) -> list[dict]:
    """Run the stages and print one row each; returns the rows (also written to `out` as JSON)."""
    work = Path(workdir or tempfile.mkdtemp(prefix="rlhf-course-gpu-check-"))
    on_gpu = torch.cuda.is_available() and not standin
    if on_gpu:
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
        print(f"building Mistral-7B v0.1 from its published config with RANDOM weights in {work / 'model'} "
              "(nothing downloaded; memory and speed do not depend on the weights)")
        model_dir = build_random_7b(work / "model")
        # a T4, whatever this card is: fp16 compute (no native bf16) and 15 GB
        t4 = Hardware("cuda", "Tesla T4 (simulated)", cap_gib, bf16=False, n_gpus=1, cpu_count=2)
        profile = profile_7b(t4, f"gpu-check on {props.name}").replace(model_id=str(model_dir), judge_model_id=None)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 1e9 / props.total_memory))
        print(f"capped to {cap_gib:.0f} GB of the {props.total_memory / 1e9:.0f} GB of {props.name}; compute fp16")
    else:
        device = f"CPU ({platform.processor() or platform.machine()}), stand-in model"
        build_standin(work / "standin")
        profile = rehearsal_profile(work / "standin")
    data = full_length_data(profile, load_tokenizer(profile))
    rows = []
    for stage in stages:
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        row = {"stage": stage, "device": device, "weights": "random" if on_gpu else "stand-in", "steps": steps}
        try:
            row |= run_stage(stage, profile, data, work, steps)
        except torch.cuda.OutOfMemoryError as err:
            row["error"] = f"out of memory: {str(err).splitlines()[0]}"
        gc.collect()
        free_memory()
        row["live_4bit_bases_after"] = live_4bit_bases()
        if on_gpu:
            row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            if stage in PLANNED:
                estimate = gpu_memory.plan("mistral-7b", PLANNED[stage], "t4", profile=profile)
                row["estimate_gib"] = round((estimate.total_bytes - gpu_memory.CUDA_CONTEXT_BYTES) / 2**30, 2)
                row["measured_over_estimate"] = round(row["peak_allocated_gib"] / row["estimate_gib"], 2)
        rows.append(row)
        print(format_row(row), flush=True)
    if out is not None:
        Path(out).write_text(json.dumps(rows, indent=1))
    return rows


def format_row(row: dict) -> str:
    def num(key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    return (f"{row['stage']:<9} peak allocated {num('peak_allocated_gib', '5.2f')} GiB, reserved "
            f"{num('peak_reserved_gib', '5.2f')} GiB | estimate {num('estimate_gib', '5.2f')} GiB, measured/estimate "
            f"{num('measured_over_estimate', '4.2f')} | {num('seconds_per_step', '6.2f')} s/step | generation "
            f"{num('generation_tokens_per_s', '6.1f')} tokens/s | live 4-bit bases after: {row['live_4bit_bases_after']}"
            + (f" | {row['error']}" if "error" in row else ""))
