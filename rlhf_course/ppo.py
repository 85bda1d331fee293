"""PPO for language models, ours: TRL removed its PPO trainer in 2026, and no maintained library
has one. One file, read top to bottom, CleanRL-style: config -> pure helpers (rewards with a
per-token KL penalty, GAE, the clipped losses) -> the model pieces -> the trainer.

One PPO iteration:
  1. rollout   - sample an answer for a batch of prompts from the policy;
  2. evaluate  - log-probs of the policy and of the reference (the same model with its LoRA adapter
                 disabled), values from the value head, and a score from the reward model;
  3. rewards   - per token: -kl_coef * (log pi - log pi_ref); plus the score on the last token;
  4. GAE       - advantages and returns from rewards and values;
  5. optimise  - several epochs of minibatches of the clipped policy loss + clipped value loss.

The 7B shape: one (4-bit) base model carries the policy's LoRA adapter with a value head, and the
reward model as a second LoRA adapter with its score head - so a T4 never holds a second copy of
the 7B weights. The reference is that same base with the adapters switched off. The tiny profile
runs the very same code (also in 4-bit, in the tests).

Built on `accelerate`: `accelerate launch --num_processes N script.py` runs it data-parallel with
no code change (each process samples its own prompts; gradients are averaged).

References: Schulman et al. 2017 (PPO, arXiv:1707.06347); Schulman et al. 2016 (GAE,
arXiv:1506.02438); Ziegler et al. 2019 (RLHF for LMs, arXiv:1909.08593) and its code
openai/lm-human-preferences; Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155); Huang et al. 2024,
"The N+ implementation details of RLHF with PPO" (arXiv:2403.17031).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from peft import LoraConfig, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from rlhf_course import checkpoint_io, toyworld, tracking
from rlhf_course.errors import RunError, UsageError
from rlhf_course.loading import (active_adapter, add_reference_adapter, is_adapter, load_policy, load_tokenizer,
                                 reference_policy)
from rlhf_course.profiles import TINY_RECIPE
from rlhf_course.reward_model import tokenize_conversations
from rlhf_course.sampling import Completion, RewardFn, answer_mask, decode_responses, prompt_mask, sample_ids
from rlhf_course.training import TrainResult


def knob(default, help: str):
    """A config field with its one-line help (read by people, and by `rlhf-course train ppo --help`)."""
    return field(default=default, metadata={"help": help})


@dataclass
class PPOConfig:
    """PPO's knobs, named as in the papers and in CleanRL / lm-human-preferences. The defaults are the
    tiny profile's; `PPOConfig.for_profile(profile)` takes batch, lengths, steps, learning rate and
    kl_coef from a profile (its recipe), which is what `train_ppo` does."""

    # rollout
    batch_size: int = knob(32, "prompts (= answers) sampled per iteration, per process")
    max_new_tokens: int = knob(64, "answers longer than this are cut (and penalised, see missing_eos_penalty)")
    temperature: float = knob(1.0, "sampling temperature; log-probs use the same one")
    # optimisation
    learning_rate: float = knob(TINY_RECIPE.ppo_learning_rate, "LoRA adapters and value head (tiny: 1e-3 diverges)")
    num_ppo_epochs: int = knob(2, "passes over each batch of rollouts")
    num_minibatches: int = knob(2, "minibatches per epoch")
    max_grad_norm: float = knob(1.0, "gradients are clipped to this global norm")
    # PPO losses
    clip_coef: float = knob(0.2, "epsilon of the clipped surrogate (PPO Eq. 7)")
    vf_coef: float = knob(0.1, "weight of the value loss")
    cliprange_value: float = knob(0.2, "clip of the value update (lm-human-preferences)")
    ent_coef: float = knob(0.0, "entropy bonus (0: the KL penalty already keeps the policy stochastic)")
    gamma: float = knob(1.0, "no discounting within an answer")
    gae_lambda: float = knob(0.95, "lambda of GAE: 0 is the TD error, 1 the Monte-Carlo return")
    whiten_advantages: bool = knob(True, "normalise advantages to mean 0, std 1 over the batch's real tokens")
    # KL penalty to the reference
    kl_coef: float = knob(TINY_RECIPE.ppo_kl_coef, "beta in r_t = -beta * (log pi - log pi_ref)")
    adaptive_kl: bool = knob(False, "Ziegler et al.'s controller drives the KL toward target_kl")
    target_kl: float = knob(6.0, "nats per answer")
    kl_horizon: int = knob(10_000, "samples over which the controller adapts")
    # reward
    normalize_reward: bool = knob(True, "shift/scale scores to mean 0, std 1 on the initial policy's samples")
    reward_clip: float = knob(5.0, "clip normalised scores to [-clip, clip]")
    missing_eos_penalty: float = knob(1.0, "subtracted from the score of an answer that never ended")
    # run
    steps: int = knob(100, "PPO iterations")
    mixed_precision: str = knob("no", "'fp16' (a T4) or 'bf16': autocast on a GPU, as the profile computes")
    seed: int = knob(0, "seed of sampling, shuffling and the adapter's initialisation")
    report_to: str | None = knob(None, "'tensorboard' or 'trackio': the curves there too (None: $RLHF_COURSE_REPORT_TO)")

    def __post_init__(self):
        positive = ("batch_size", "max_new_tokens", "temperature", "learning_rate", "num_ppo_epochs", "num_minibatches",
                    "max_grad_norm", "clip_coef", "target_kl", "kl_horizon", "reward_clip", "steps")
        for name in positive:
            if not getattr(self, name) > 0:
                raise UsageError(f"PPOConfig.{name} must be above 0, got {getattr(self, name)!r}")
        for name in ("vf_coef", "cliprange_value", "ent_coef", "kl_coef", "missing_eos_penalty"):
            if getattr(self, name) < 0:
                raise UsageError(f"PPOConfig.{name} must be 0 or more, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"PPOConfig.{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.batch_size % self.num_minibatches:
            raise UsageError(f"PPOConfig.batch_size ({self.batch_size}) must divide into num_minibatches "
                             f"({self.num_minibatches})")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UsageError(f"PPOConfig.mixed_precision is 'no', 'fp16' or 'bf16', not {self.mixed_precision!r}")
        self.minibatch_size = self.batch_size // self.num_minibatches

    @classmethod
    def for_profile(cls, profile, **changes) -> "PPOConfig":
        """The profile's numbers (batch, answer length, steps, temperature, its recipe's learning rate and
        kl_coef), then `changes` on top."""
        num_minibatches = changes.get("num_minibatches", cls.num_minibatches)
        on_gpu = profile.device == "cuda"
        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(profile.compute_dtype, "no") if on_gpu else "no"
        defaults = dict(batch_size=profile.batch_size, max_new_tokens=profile.max_new_tokens, steps=profile.ppo_steps,
                        temperature=profile.temperature, learning_rate=profile.recipe.ppo_learning_rate,
                        kl_coef=profile.recipe.ppo_kl_coef, mixed_precision=precision,
                        # a batch smaller than the default number of minibatches (a 7B's batch of 4) is one minibatch
                        num_minibatches=min(num_minibatches, profile.batch_size))
        return cls(**{**defaults, **changes})


# --- pure helpers: the maths of PPO for LMs ----------------------------------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1) if dim is None else (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to mean 0, std 1 over the unmasked entries only (padding must not count)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (Ziegler et al. 2019, Eq. 2; InstructGPT Eq. 2).

    scores (B,): the reward model's score of each whole answer; logprobs, ref_logprobs, mask (B, T).
    Returns (rewards (B, T), kl (B, T)): rewards_t = -kl_coef * kl_t, plus the score on the last token.
    """
    kl = (logprobs - ref_logprobs) * mask                     # (B, T) log pi - log pi_ref, the k1 estimator
    rewards = -kl_coef * kl                                   # (B, T)
    last = mask.sum(dim=1).long().clamp(min=1) - 1            # (B,) index of each answer's last token
    rewards[torch.arange(len(scores)), last] += scores        # the score arrives when the answer ends
    return rewards, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16), backwards over tokens.

    rewards, values, mask: (B, T). Returns (advantages, returns), both (B, T) and zero on padding.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])  # 0 after the end
        delta = rewards[:, t] + gamma * next_value - values[:, t]                       # TD error
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    returns = advantages + values
    return advantages, returns


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_coef: float) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate objective (PPO, Eq. 7), as a loss to minimise. All inputs (B, T)."""
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - logratio, mask)   # k3 estimator (CleanRL; Schulman's blog)
        clipfrac = masked_mean((pg_losses2 > pg_losses).float(), mask)
    return pg_loss, {"approx_kl": approx_kl.item(), "clipfrac": clipfrac.item()}


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (lm-human-preferences; OpenAI baselines). All inputs (B, T)."""
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses2 = (values_clipped - returns) ** 2
    v_loss_clipped = 0.5 * masked_mean(torch.max(vf_losses, vf_losses2), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses).float(), mask)
    return v_loss_clipped, {"vf_clipfrac": vf_clipfrac.item()}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


class AdaptiveKLController:
    """Ziegler et al. 2019, Sec. 2.2: beta_{t+1} = beta_t (1 + K_beta e_t), e_t = clip(KL/target - 1, +-0.2)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_samples / self.horizon


# --- the model pieces --------------------------------------------------------------------------

class PolicyWithValueHead(nn.Module):
    """The PEFT policy plus a value head on the same trunk (the last hidden state), as in
    lm-human-preferences. One forward gives the next-token logits and a value per position."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy                                # a PeftModel (LoRA adapter on a frozen base)
        hidden = policy.get_base_model().config.hidden_size
        # fp32, trained in full. Zero-initialised: a random head would predict values of the size of
        # the (normalised) reward itself, and its noise would drown the first advantages.
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                from_position: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T', V) and values (B, T') at positions from_position ... T-1 (T' = T - from_position):
        PPO needs them only where the answer is predicted, so the vocabulary projection skips the prompt."""
        base = self.policy.get_base_model()                 # LoRA layers are inside it: the adapter applies
        hidden = base.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        hidden = hidden[:, from_position:]                  # (B, T', H)
        logits = base.lm_head(hidden)                       # (B, T', V)
        with torch.autocast(hidden.device.type, enabled=False):  # the value head computes in fp32 (fp16 on a T4)
            values = self.value_head(hidden.float()).squeeze(-1)  # (B, T')
        return logits, values


class AdapterRewardModel:
    """A reward model that lives on the policy's base as a second LoRA adapter plus a score head.

    Load it from a folder written by `reward_model.train_reward_model(..., out_dir=...)` (TRL's
    RewardTrainer with LoRA `task_type="SEQ_CLS"`): the adapter's LoRA weights go into adapter
    "reward", its `score` weight into a linear head. The base must be the one the reward model was
    trained on (here: the SFT model). Called with our reward-function protocol."""

    def __init__(self, policy, tokenizer, adapter_dir: str | Path, adapter_name: str = "reward"):
        cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
        weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
        score_key = next(k for k in weights if k.endswith("score.weight") or k.endswith("score.modules_to_save.default.weight"))
        if adapter_name not in policy.peft_config:  # put on once; a second reward function reuses it
            trainable = {n: p.requires_grad for n, p in policy.named_parameters()}
            lora = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"],
                              lora_dropout=0.0, bias=cfg.get("bias", "none"), use_rslora=cfg.get("use_rslora", False))
            policy.add_adapter(adapter_name, lora)
            lora_weights = {k: v for k, v in weights.items() if "lora_" in k}
            result = set_peft_model_state_dict(policy, lora_weights, adapter_name=adapter_name)
            assert not [k for k in result.unexpected_keys if "lora_" in k], f"reward adapter keys not loaded: {result.unexpected_keys[:3]}"
            for n, p in policy.named_parameters():  # the reward adapter is frozen; the others keep their state
                p.requires_grad_(trainable.get(n, False))
        self.policy, self.tokenizer, self.adapter_name = policy, tokenizer, adapter_name
        head = weights[score_key]
        self.score_head = nn.Linear(head.shape[1], 1, bias=False).to(policy.device)  # fp32, as trained
        self.score_head.weight.data.copy_(head.float())
        self.score_head.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[Completion]) -> list[float]:
        # Rendered exactly as TRL's RewardTrainer rendered the training pairs (the chat template over
        # the prompt and the answer, closed by the end-of-turn token), then padded on the left.
        ids = tokenize_conversations(self.tokenizer, prompts, completions)
        enc = self.tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left",
                                 return_tensors="pt").to(self.policy.device)
        with active_adapter(self.policy, self.adapter_name):
            hidden = self.policy.get_base_model().model(**enc, use_cache=False).last_hidden_state
        return self.score_head(hidden[:, -1].float()).squeeze(-1).tolist()  # left padding: last token is real


# --- the trainer -------------------------------------------------------------------------------

class PPOTrainer:
    """PPO on a LoRA policy. `reward_fn(prompts, completions) -> list[float]` scores answers: the
    adapter reward model, the toy world's ground truth, or anything else. `monitor_fn` is logged but
    not optimised (e.g. the ground truth while training against a reward model)."""

    def __init__(self, config: PPOConfig, policy, tokenizer, reward_fn: RewardFn, prompts: list,
                 monitor_fn: RewardFn | None = None, accelerator: Accelerator | None = None):
        self.cfg, self.tokenizer, self.reward_fn, self.monitor_fn = config, tokenizer, reward_fn, monitor_fn
        self.prompts = list(prompts)
        # cpu=True without a GPU: `accelerate launch --multi_gpu --num_processes 2` then runs on CPU processes (gloo).
        # On a GPU, mixed precision as the profile computes: fp16 (a T4) scales the loss; the trained weights
        # (LoRA, value head) stay fp32 and log-probs are taken in fp32.
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                                      mixed_precision=config.mixed_precision)
        torch.manual_seed(config.seed + self.accelerator.process_index)
        self.rng = random.Random(config.seed + self.accelerator.process_index)  # each process its own prompts
        self.model = PolicyWithValueHead(policy).to(self.accelerator.device)
        # The PEFT policy itself (sampling, the reference switch, saving). self.model wraps it - in DDP under
        # `accelerate launch` - but it is the same object: kept here rather than unwrapped at every use
        # (accelerate's unwrap_model walks every module, twice per iteration).
        self.policy = self.model.policy
        # Only the LoRA adapter and the value head train. The list is kept: clipping the gradient norm over
        # it instead of all the model's parameters gives the same norm (the frozen ones have no gradient),
        # without walking the whole model at every update.
        self.trained_params = [p for p in self.model.parameters() if p.requires_grad]
        # foreach=True: AdamW updates all the LoRA tensors with one call per operation instead of a Python loop
        # over them (torch's default on a GPU, not on a CPU); bit for bit the same result, 1.5-2x faster on the tiny
        # model. (fused=True is 5x faster but rounds differently: results would move in the last bits.)
        self.optimizer = torch.optim.AdamW(self.trained_params, lr=config.learning_rate, eps=1e-5, foreach=True)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
        self.reward_shift, self.reward_scale = 0.0, 1.0
        self.history: list[dict] = []
        self.step_count = 0

    def _forward(self, input_ids, attention_mask, context_length: int, temperature: float):
        """Log-probs, values and logits of the answer tokens: positions context_length-1 ... T-2
        predict tokens context_length ... T-1 (the answer)."""
        logits, values = self.model(input_ids, attention_mask, context_length - 1)
        logits = logits[:, :-1] / temperature                             # (B, Tr, V)
        logprobs = torch.gather(F.log_softmax(logits.float(), dim=-1), 2,
                                input_ids[:, context_length:, None]).squeeze(-1)  # (B, Tr)
        return logprobs, values[:, :-1], logits

    @torch.no_grad()
    def rollout(self) -> dict:
        """Steps 1-3: sample answers, score them, and build per-token rewards."""
        cfg, tok = self.cfg, self.tokenizer
        prompts = [self.rng.choice(self.prompts) for _ in range(cfg.batch_size)]
        self.model.eval()  # no dropout while sampling and scoring
        query, response, ended = sample_ids(self.policy, tok, prompts, cfg.max_new_tokens, temperature=cfg.temperature)
        completions = decode_responses(tok, response, ended)
        Tq = query.shape[1]
        # Detail 1: left-padded prompts + right-padded answers; the attention mask covers the real tokens.
        # (Llama/Mistral use rotary positions, which depend only on distances, so left padding shifts nothing.)
        resp_mask = answer_mask(response, tok.eos_token_id)                              # (B, Tr) incl. EOS
        input_ids = torch.cat([query, response], dim=1)
        attention_mask = torch.cat([prompt_mask(query, tok.pad_token_id), resp_mask], dim=1)

        logprobs, values, _ = self._forward(input_ids, attention_mask, Tq, cfg.temperature)
        # Detail 2: the reference is the same network - no second copy: with the LoRA adapter switched off,
        # or, when training continues the SFT adapter of a 4-bit base, that adapter's frozen copy "ref".
        with reference_policy(self.policy):
            ref_logprobs, _, _ = self._forward(input_ids, attention_mask, Tq, cfg.temperature)

        raw_scores = torch.tensor(self.reward_fn(prompts, completions), dtype=torch.float, device=input_ids.device)
        # Detail 3: normalise the reward on the initial policy's samples (lm-human-preferences'
        # "reward normalisation"): mean 0, std 1, fixed for the whole run, so kl_coef means the same
        # whatever the reward model's scale.
        if self.cfg.normalize_reward and self.step_count == 0:
            gathered = self.accelerator.gather(raw_scores)
            self.reward_shift, self.reward_scale = gathered.mean().item(), gathered.std().item() + 1e-6
        scores = ((raw_scores - self.reward_shift) / self.reward_scale).clamp(-cfg.reward_clip, cfg.reward_clip)
        # Detail 4: an answer that never ended (cut at max_new_tokens) is penalised (Huang et al. 2024, #4).
        scores = scores - cfg.missing_eos_penalty * (~ended).float()

        # Detail 5: per-token KL penalty, score on the last token (Ziegler et al. 2019).
        mask = resp_mask.float()
        rewards, kl = compute_rewards(scores, logprobs, ref_logprobs, mask, self.kl_ctl.value)
        # Detail 6: GAE over the answer tokens; gamma = 1, the episode is one answer.
        advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
        # Detail 7: whiten advantages over the batch's real tokens only.
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        stats = {
            "reward/score": raw_scores.mean().item(),
            "reward/score_normalised": scores.mean().item(),
            "objective/kl": kl.sum(dim=1).mean().item(),
            "objective/rlhf_reward": (scores - self.kl_ctl.value * kl.sum(dim=1)).mean().item(),
            "rollout/length": mask.sum(dim=1).mean().item(),
            "rollout/ended": ended.float().mean().item(),
        }
        if self.monitor_fn is not None:
            stats["reward/monitor"] = sum(self.monitor_fn(prompts, completions)) / len(prompts)
        return dict(input_ids=input_ids, attention_mask=attention_mask, context_length=Tq, mask=mask,
                    logprobs=logprobs, values=values, advantages=advantages, returns=returns,
                    prompts=prompts, completions=completions, stats=stats)

    def optimise(self, batch: dict) -> dict:
        """Step 5: several epochs of shuffled minibatches of the PPO losses."""
        cfg = self.cfg
        self.model.train()
        logs: dict[str, list[float]] = {k: [] for k in ("loss/policy", "loss/value", "policy/approx_kl",
                                                        "policy/clipfrac", "policy/entropy", "value/clipfrac")}
        B = batch["input_ids"].shape[0]
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(B)
            for start in range(0, B, cfg.minibatch_size):
                idx = order[start : start + cfg.minibatch_size]
                mb = {k: batch[k][idx] for k in ("input_ids", "attention_mask", "mask", "logprobs", "values",
                                                  "advantages", "returns")}
                logprobs, values, logits = self._forward(mb["input_ids"], mb["attention_mask"],
                                                         batch["context_length"], cfg.temperature)
                pg_loss, pg_stats = ppo_policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], cfg.clip_coef)
                v_loss, v_stats = ppo_value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.cliprange_value)
                with torch.set_grad_enabled(cfg.ent_coef != 0):  # only logged unless it is in the loss
                    entropy = masked_mean(entropy_from_logits(logits), mb["mask"])
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(self.trained_params, cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in (("loss/policy", pg_loss.item()), ("loss/value", v_loss.item()),
                             ("policy/approx_kl", pg_stats["approx_kl"]), ("policy/clipfrac", pg_stats["clipfrac"]),
                             ("policy/entropy", entropy.item()), ("value/clipfrac", v_stats["vf_clipfrac"])):
                    logs[k].append(v)
        return {k: sum(v) / len(v) for k, v in logs.items()}

    def step(self) -> dict:
        """One PPO iteration; returns its logged statistics (averaged over processes)."""
        t0 = time.perf_counter()
        batch = self.rollout()
        t1 = time.perf_counter()
        stats = {**batch["stats"], **self.optimise(batch)}
        t2 = time.perf_counter()
        # Detail 8: adapt the KL coefficient toward the target (optional).
        if self.cfg.adaptive_kl:
            self.kl_ctl.update(stats["objective/kl"], self.cfg.batch_size * self.accelerator.num_processes)
        keys = sorted(stats)
        values = self.accelerator.reduce(torch.tensor([stats[k] for k in keys], device=self.accelerator.device),
                                         reduction="mean")
        stats = dict(zip(keys, values.tolist()))
        self.step_count += 1
        stats.update({"step": self.step_count, "kl_coef": self.kl_ctl.value,
                      "time/rollout": t1 - t0, "time/optimise": t2 - t1})
        self.history.append(stats)
        return stats

    def train(self, steps: int | None = None, progress: bool = True, checkpoint_dir: str | Path | None = None,
              save_every: int = 10) -> TrainResult:
        """Run PPO until `steps` iterations in all (a resumed run continues from its step). With
        `checkpoint_dir`, save a checkpoint every `save_every` iterations and at the end."""
        steps = steps if steps is not None else self.cfg.steps
        bar = tqdm(range(self.step_count, steps), desc="PPO", initial=self.step_count, total=steps,
                   disable=not progress or not self.accelerator.is_main_process)
        choice = tracking.report_to(self.cfg.report_to) if self.accelerator.is_main_process else "none"
        curves = tracking.CurveLogger(choice, tracking.run_name("ppo"), asdict(self.cfg))
        try:
            for _ in bar:
                s = self.step()
                curves.log(s)  # TensorBoard/trackio when asked (TRL's report_to); `history` always
                bar.set_postfix({"score": f"{s['reward/score']:.2f}", "kl": f"{s['objective/kl']:.2f}"})
                if checkpoint_dir is not None and (self.step_count % save_every == 0 or self.step_count == steps):
                    self.save_checkpoint(checkpoint_dir)
        finally:
            curves.close()
        last = self.history[-1]
        metrics = {"reward": last["reward/score"], "kl": last["objective/kl"], "steps": self.step_count}
        if "reward/monitor" in last:
            metrics["reward_monitor"] = last["reward/monitor"]
        return TrainResult(self.policy, metrics, self.history)

    # --- checkpoints: everything needed to continue exactly where we stopped -----------------------

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Adapter, value head, optimiser and RNG states, step, KL coefficient, reward normalisation and
        history: safetensors and JSON, no pickle. Each save goes to its own step folder and is committed
        once complete, so a kill at any moment leaves the previous checkpoint intact (see checkpoint_io.py).
        A directory holding a checkpoint that this trainer did not load is refused, never overwritten."""
        directory = Path(directory)
        self.accelerator.wait_for_everyone()
        owned = getattr(self, "_checkpoint_dir", None) == directory.resolve()
        if not owned and (directory / checkpoint_io.STATE).exists():
            raise RunError(f"{directory} holds the checkpoint of another run: pass resume=True (--resume) to "
                           "continue it, or choose another checkpoint folder")
        folder = checkpoint_io.folder_for(directory, self.step_count)  # the same name on every process
        self.accelerator.wait_for_everyone()
        try:
            if self.accelerator.is_main_process:
                checkpoint_io.make_empty(folder)
                self.policy.save_pretrained(folder / "adapter", selected_adapters=["default"])
                head = self.accelerator.unwrap_model(self.model).value_head
                save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                          str(folder / "value_head.safetensors"))
                checkpoint_io.save_optimizer(self.optimizer.state_dict(), folder)
            self.accelerator.wait_for_everyone()
            # every process keeps its own random streams (it samples its own prompts)
            checkpoint_io.save_rng(self.rng.getstate(), folder, self.accelerator.process_index)
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                state = {"step": self.step_count, "kl_coef": self.kl_ctl.value, "reward_shift": self.reward_shift,
                         "reward_scale": self.reward_scale, "processes": self.accelerator.num_processes,
                         "config": asdict(self.cfg), "history": self.history}
                checkpoint_io.commit(directory, folder, state)
        except OSError as err:
            if self.accelerator.is_main_process:
                shutil.rmtree(folder, ignore_errors=True)  # give the space back; the previous checkpoint stands
            if checkpoint_io.is_disk_full(err):
                need = 3 * sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
                raise RunError(f"no space left on the disk of {directory} while saving the checkpoint of step "
                               f"{self.step_count} (a checkpoint takes about {need / 2**20:.0f} MiB: weights and "
                               "two optimiser moments); the previous checkpoint is kept: free some space, then "
                               "resume") from err
            raise
        self.accelerator.wait_for_everyone()
        self._checkpoint_dir = directory.resolve()
        return directory

    def load_checkpoint(self, directory: str | Path) -> None:
        """Continue from the newest intact checkpoint in `directory` (same config, same base model).
        A damaged newest checkpoint falls back to the previous one and says so; a folder with nothing
        intact, or with pickled states (which could run code), is refused with RunError."""
        found = checkpoint_io.find(directory)
        if found is None:
            raise RunError(f"{directory}: no checkpoint to resume from")
        if found.note and self.accelerator.is_main_process:
            print(found.note)
        state, folder = found.state, found.folder
        if state.get("processes", 1) != self.accelerator.num_processes:
            raise RunError(f"{folder} was saved by {state.get('processes', 1)} processes, this run has "
                           f"{self.accelerator.num_processes}: resume with the same number")
        try:
            weights = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
            set_peft_model_state_dict(self.policy, weights, adapter_name="default")
            head = self.accelerator.unwrap_model(self.model).value_head
            head.load_state_dict(load_file(str(folder / "value_head.safetensors"), device=str(head.weight.device)))
            self.optimizer.load_state_dict(checkpoint_io.load_optimizer(folder))
            python_rng = checkpoint_io.load_rng(folder, self.accelerator.process_index)
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
            raise RunError(f"{folder}: cannot load this checkpoint ({type(err).__name__}: {str(err)[:200]}); "
                           "(was it saved with other settings?) start the run again without resume, in another folder") from err
        self.step_count, self.kl_ctl.value = state["step"], state["kl_coef"]
        self.reward_shift, self.reward_scale, self.history = state["reward_shift"], state["reward_scale"], state["history"]
        self.rng.setstate(_as_tuple(python_rng))
        self._checkpoint_dir = Path(directory).resolve()


def _as_tuple(x):
    """random.getstate() nests tuples; make sure they are tuples again whatever was serialised."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --- one call for notebooks and the pipeline ---------------------------------------------------

def train_ppo(profile, *, model_id: str | None = None, reward_model_dir: str | Path | None = None,
              reward_fn: RewardFn | None = None, monitor_fn: RewardFn | None = None, prompts: list | None = None,
              config: PPOConfig | None = None, steps: int | None = None, load_in_4bit: bool | None = None,
              checkpoint_dir: str | Path | None = None, resume: bool = False, save_every: int = 10,
              progress: bool = True, **config_changes) -> TrainResult:
    """PPO from the profile's (SFT) model. The reward is the adapter reward model in
    `reward_model_dir` (trained on the same base), or `reward_fn`, or the toy world's ground truth.
    With `checkpoint_dir` (e.g. a Drive folder in Colab) a checkpoint is kept there, and `resume`
    continues from it. The result's `.model` is the PEFT policy; `.history` one dict per iteration."""
    if checkpoint_dir is not None and not resume and (Path(checkpoint_dir) / checkpoint_io.STATE).exists():
        raise RunError(f"{checkpoint_dir} holds the checkpoint of another run: pass resume=True (--resume) to "
                       "continue it, or choose another checkpoint folder")  # before any model loads
    cfg = config or PPOConfig.for_profile(profile, **config_changes)
    tracking.report_to(cfg.report_to)  # a missing TensorBoard/trackio says so before any model loads
    torch.manual_seed(cfg.seed)  # the LoRA adapter's initialisation is random too
    tokenizer = load_tokenizer(profile, model_id)
    policy = load_policy(profile, model_id=model_id, load_in_4bit=load_in_4bit)
    if is_adapter(model_id):  # training continues the SFT adapter (a 4-bit base): its frozen copy is pi_ref
        add_reference_adapter(policy)
    if reward_model_dir is not None:
        reward_fn = AdapterRewardModel(policy, tokenizer, reward_model_dir)
    reward_fn = reward_fn or toyworld.ground_truth_rewards
    prompts = prompts or [p.text for p in toyworld.train_prompts()]
    trainer = PPOTrainer(cfg, policy, tokenizer, reward_fn, prompts, monitor_fn=monitor_fn)
    if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / checkpoint_io.STATE).exists():
        trainer.load_checkpoint(checkpoint_dir)
    return trainer.train(steps, progress, checkpoint_dir, save_every)
