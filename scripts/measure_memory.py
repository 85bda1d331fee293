"""Measure the real peak GPU memory of the 7b profile's training steps, next to `rlhf-course memory`.

    python scripts/measure_memory.py --model mistral-7b --gpu t4 --out benchmarks/memory_mistral-7b.json

No download: a random-initialised model of the architecture is written once to --workdir (fp16
safetensors; random weights need the same memory as trained ones), then loaded exactly as the course
loads a 7B (4-bit NF4 + double quantisation, LoRA) and each method runs two steps with every sequence
at the profile's max_length. It records torch.cuda.max_memory_allocated() and the planner's estimate
without its CUDA-context constant, and their ratio. --gpu names the card whose settings (fp16 or bf16)
the plan assumes; run it on that card. On a CPU (`--model tiny`) the same code runs and no peak is recorded.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import datasets
import torch

from rlhf_course import memory
from rlhf_course.loading import load_reward_model, load_tokenizer
from rlhf_course.profiles import Hardware, detect_hardware, pick_profile, profile_7b


def write_random_model(arch: memory.Architecture, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    if (folder / "config.json").exists():
        return folder
    cls = Qwen2Config if arch.qkv_bias and not arch.o_bias else MistralConfig if "istral" in arch.name or "zephyr" in arch.name else LlamaConfig
    config = cls(hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                 num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
                 num_key_value_heads=arch.num_key_value_heads, vocab_size=arch.vocab_size,
                 tie_word_embeddings=arch.tie_word_embeddings, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model.save_pretrained(folder)
    load_tokenizer(pick_profile("tiny")).save_pretrained(folder)  # ids below any vocabulary: fine for memory
    return folder


def full_length_data(profile, n: int = 64) -> datasets.Dataset:
    """Preference pairs whose prompt and answers nearly fill max_prompt_length and max_new_tokens (these
    words take 11 tokens per 8 in the course's tokenizer; a few tokens are left for the chat template:
    the reward trainer drops, rather than cuts, pairs longer than max_length)."""
    words = ("the", "tip", "water", "plant", "sun", "step", "first", "then")
    text = lambda tokens, i: " ".join(words[(i + j) % len(words)] for j in range(tokens * 8 // 11 - 4))  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": text(profile.max_prompt_length, i)}],
             "chosen": [{"role": "assistant", "content": text(profile.max_new_tokens, i + 1)}],
             "rejected": [{"role": "assistant", "content": text(profile.max_new_tokens, i + 2)}]} for i in range(n)]
    return datasets.Dataset.from_list(rows)


def measure(method: str, profile, model_id: str, workdir: Path) -> dict:
    from rlhf_course.dpo import train_dpo
    from rlhf_course.ppo import train_ppo
    from rlhf_course.reward_model import train_reward_model
    from rlhf_course.sft import train_sft

    data = full_length_data(profile)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if method == "sft":
        sft_rows = data.map(lambda r: {"completion": r["chosen"]}, remove_columns=["chosen", "rejected"])
        train_sft(profile, sft_rows, model_id=model_id, steps=2, progress=False)
    elif method == "rm":
        train_reward_model(profile, data, data.select(range(4)), model_id=model_id, steps=2, progress=False)
    elif method == "dpo":
        train_dpo(profile, data, model_id=model_id, steps=2, progress=False)
    else:
        rm_dir = workdir / "reward_adapter"
        if not rm_dir.exists():  # a fresh reward adapter: PPO carries it as a second adapter
            load_reward_model(profile, model_id=model_id, verbose=False).save_pretrained(rm_dir)
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        prompts = [row["prompt"] for row in data]
        train_ppo(profile, model_id=model_id, reward_model_dir=rm_dir, prompts=prompts, steps=2, progress=False)
    gc.collect()
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mistral-7b")
    parser.add_argument("--gpu", default="t4", choices=list(memory.GPUS))
    parser.add_argument("--methods", nargs="+", default=list(memory.METHODS))
    parser.add_argument("--workdir", default="/tmp/rlhf-course-memory")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    arch = memory.architecture(args.model)
    workdir = Path(args.workdir) / args.model.replace("/", "_")
    model_id = str(write_random_model(arch, workdir / "model"))
    hw = detect_hardware()
    if hw.device == "cuda":
        profile = profile_7b(hw, "memory measurement").replace(model_id=model_id)
    else:  # CPU: the tiny profile's numbers, loaded in 4-bit like the 7b profile
        profile = pick_profile("tiny", Hardware("cpu")).replace(model_id=model_id, load_in_4bit=True)
    results = []
    for method in args.methods:
        estimate = memory.plan(arch, method, args.gpu)
        got = measure(method, profile, model_id, workdir)
        row = {"model": arch.name, "method": method, "gpu": args.gpu, "device": hw.describe(),
               "estimate_bytes": estimate.total_bytes - memory.CUDA_CONTEXT_BYTES, **got}
        if got["peak_allocated_bytes"]:
            row["ratio_estimate_over_measured"] = round(row["estimate_bytes"] / got["peak_allocated_bytes"], 3)
        print(json.dumps(row))
        results.append(row)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
