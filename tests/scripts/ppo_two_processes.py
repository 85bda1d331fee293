"""Run by tests/test_ppo.py under `accelerate launch --multi_gpu --num_processes 2` on a CPU: the PPO trainer, unchanged,
data-parallel on two processes. Prints one line from the main process if the adapters stayed in sync."""

import torch

from rlhf_course import toyworld
from rlhf_course.loading import load_policy, load_tokenizer
from rlhf_course.ppo import PPOConfig, PPOTrainer
from rlhf_course.profiles import pick_profile

torch.set_num_threads(1)
profile = pick_profile("tiny")
tokenizer = load_tokenizer(profile)
policy = load_policy(profile, verbose=False)
cfg = PPOConfig(batch_size=8, num_minibatches=2, num_ppo_epochs=1, max_new_tokens=24, steps=2)
trainer = PPOTrainer(cfg, policy, tokenizer, toyworld.ground_truth_rewards,
                     [p.text for p in toyworld.train_prompts()])
accelerator = trainer.accelerator  # created by the trainer, as in any script: nothing here knows about processes
result = trainer.train(progress=False)
# DDP averages gradients, so every process must hold the same adapter after each optimiser step
lora = torch.cat([p.detach().flatten() for n, p in trainer.policy.named_parameters() if "lora_B" in n])
gathered = accelerator.gather(lora[None])                       # (n_processes, n_params)
in_sync = all(torch.allclose(gathered[0], g, atol=1e-6) for g in gathered[1:])
changed = lora.abs().sum().item() > 0                            # LoRA B starts at zero
if accelerator.is_main_process:
    print(f"processes={accelerator.num_processes} in_sync={in_sync} changed={changed} "
          f"steps={len(result.history)} reward={result.metrics['reward']:.3f}")
