"""Seconds per step of trl 0.11.4's PPOTrainer (the last TRL release with the value-head PPO), printed as
one JSON line. Run by bench_rl_step.py in the scratch environment that has trl 0.11.4 (see README.md):

    /work/wt/trl011/bin/python benchmarks/trl011_ppo_steps.py MODEL_DIR --steps 5

The settings are the benchmark's: 16 prompts x 16 new tokens per step (EOS suppressed by
min_new_tokens, so every answer is 16 tokens long), 4 epochs x 4 minibatches of 4, the course's LoRA
adapter (the reference is the model with the adapter disabled, as ours), the toy world's ground-truth
reward, pure sampling at temperature 1. A step is what it is in our PPO: generation, scoring, and
`PPOTrainer.step` (old log-probs, reference log-probs, values, every update and the optimizer).
The prompts are rendered and tokenised once before the first step, as TRL's examples do (dataset.map).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings

import torch
import trl
from transformers import AutoTokenizer
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

from rlhf_course import toyworld
from rlhf_course.loading import lora_config
from rlhf_course.profiles import pick_profile
from rlhf_course.sampling import Completion, render_prompts


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    args = ap.parse_args()
    assert trl.__version__ == "0.11.4", f"this script is for trl 0.11.4, this environment has {trl.__version__}"
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        args.model_dir, peft_config=lora_config(pick_profile("tiny")))
    config = PPOConfig(batch_size=args.batch_size, mini_batch_size=args.batch_size // 4, ppo_epochs=4,
                       gradient_accumulation_steps=1, learning_rate=args.learning_rate, seed=0,
                       log_with=None, is_peft_model=True)
    trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tokenizer)
    generation = dict(min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens, do_sample=True,
                      temperature=1.0, top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)

    prompts = [p.text for p in toyworld.train_prompts()]
    queries = [torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)   # tokenised once
               for text in render_prompts(tokenizer, prompts)]
    rng = random.Random(0)

    def one_step() -> int:
        picked = [rng.randrange(len(prompts)) for _ in range(args.batch_size)]
        query = [queries[i] for i in picked]
        response = trainer.generate(query, batch_size=args.batch_size, return_prompt=False, **generation)
        completions = [Completion(tokenizer.decode(r, skip_special_tokens=True).strip(),
                                  bool((r == tokenizer.eos_token_id).any()), len(r)) for r in response]
        scores = [torch.tensor(s) for s in toyworld.ground_truth_rewards([prompts[i] for i in picked], completions)]
        trainer.step(query, response, scores)
        return sum(len(r) for r in response)

    one_step()  # warm-up
    times, tokens = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        tokens.append(one_step())
        times.append(time.perf_counter() - t0)
    print(json.dumps({"trl": trl.__version__, "times": times,
                      "mean_answer_tokens": sum(tokens) / len(tokens) / args.batch_size}))


if __name__ == "__main__":
    main()
