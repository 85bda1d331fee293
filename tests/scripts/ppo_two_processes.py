"""Run by tests/test_ppo.py under `accelerate launch --multi_gpu --num_processes 2` on a CPU: the PPO trainer, unchanged,
data-parallel on two processes. Prints one line from the main process if the adapters stayed in sync.
With a folder as argument, it checkpoints there and a fresh trainer on each process resumes from it: each
process must get back its own random streams (it samples its own prompts)."""

import sys

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
checkpoint_dir = sys.argv[1] if len(sys.argv) > 1 else None
result = trainer.train(progress=False, checkpoint_dir=checkpoint_dir, save_every=1)
# DDP averages gradients, so every process must hold the same adapter after each optimiser step
lora = torch.cat([p.detach().flatten() for n, p in trainer.policy.named_parameters() if "lora_B" in n])
gathered = accelerator.gather(lora[None])                       # (n_processes, n_params)
in_sync = all(torch.allclose(gathered[0], g, atol=1e-6) for g in gathered[1:])
changed = lora.abs().sum().item() > 0                            # LoRA B starts at zero
resumed = "not asked"
if checkpoint_dir is not None:
    python_state, torch_state = trainer.rng.getstate(), torch.get_rng_state()
    again = PPOTrainer(cfg, load_policy(profile, verbose=False), tokenizer, toyworld.ground_truth_rewards,
                       [p.text for p in toyworld.train_prompts()], accelerator=accelerator)
    again.load_checkpoint(checkpoint_dir)
    same = (again.step_count == 2 and again.rng.getstate() == python_state
            and torch.equal(torch.get_rng_state(), torch_state))
    # a word of each process's Mersenne Twister state: the two processes' streams must differ
    mark = torch.tensor([[float(same), float(python_state[1][1])]], dtype=torch.float64)
    both = accelerator.gather(mark)                                 # (n_processes, 2)
    resumed = bool(both[:, 0].all()) and both[0, 1].item() != both[1, 1].item()
if accelerator.is_main_process:
    print(f"processes={accelerator.num_processes} in_sync={in_sync} changed={changed} "
          f"steps={len(result.history)} reward={result.metrics['reward']:.3f} resumed={resumed}")
