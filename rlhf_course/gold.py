"""The gold reward: what every stage is measured against, on both profiles.

    reward_fn = gold_reward_fn(profile)        # fn(prompts, completions) -> list[float]

tiny   the toy world's exact ground truth (`toyworld.ground_truth_rewards`), known by construction.
7b     free text has no ground truth, so an independent judge stands in for it: a public reward model,
       `profiles.JUDGE_7B` = Skywork/Skywork-Reward-V2-Qwen3-0.6B (a Qwen3 0.6B Bradley-Terry reward model
       trained on 26M curated preference pairs; ungated; Apache-2.0). It is loaded beside the 4-bit policy
       base: about 1.2 GB in bf16 (GPUs that have it natively), 2.4 GB in fp32 (a T4: Qwen models can
       overflow fp16). It never trains, so it is never what PPO or GRPO optimise - they optimise the reward
       model the course trains on the real preference data - which makes it what Gao et al. (2022,
       arXiv:2210.10760) call a *gold* reward model: the number that shows what over-optimising the proxy costs.

The judge reads a conversation through its own tokenizer and chat template and returns one score per
answer, with the reward-model code every reward model here shares (`reward_model.score_texts`).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_course import toyworld
from rlhf_course.loading import device_map_for, from_pretrained_checked
from rlhf_course.profiles import Profile
from rlhf_course.reward_model import score_texts
from rlhf_course.sampling import RewardFn


class JudgeModel:
    """An independent reward model as a reward function: judge(prompts, completions) -> list[float]."""

    def __init__(self, model, tokenizer, model_id: str, batch_size: int = 8):
        self.model, self.tokenizer, self.model_id, self.batch_size = model.eval(), tokenizer, model_id, batch_size
        self.__name__ = "judge"  # TRL logs a reward function's mean under its name

    def __call__(self, prompts: list, completions: list) -> list[float]:
        return score_texts(self.model, self.tokenizer, prompts, completions, self.batch_size).tolist()

    def gib(self) -> float:
        """The judge's weights in GiB (what it adds beside the policy)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**30


def judge_dtype(profile: Profile) -> torch.dtype:
    """bf16 where the GPU has it natively; else fp32 (a T4: fp16 risks overflow in a Qwen model; CPU)."""
    return torch.bfloat16 if profile.device == "cuda" and profile.compute_dtype == torch.bfloat16 else torch.float32


def load_judge(profile: Profile, model_id: str | None = None, verbose: bool = True) -> JudgeModel:
    """The profile's independent judge (`profile.judge_model_id`, or `model_id`), in eval mode."""
    model_id = model_id or profile.judge_model_id
    if model_id is None:
        raise ValueError(f"the {profile.name} profile has no judge: it measures against its ground truth "
                         "(use gold_reward_fn(profile))")
    dtype = judge_dtype(profile)
    if verbose:
        print(f"loading the judge {model_id} on {profile.device}: {str(dtype).replace('torch.', '')} "
              "(an independent reward model: it scores answers, never trains)")
    tokenizer = from_pretrained_checked(AutoTokenizer, model_id)
    model = from_pretrained_checked(AutoModelForSequenceClassification, model_id, dtype=dtype,
                             device_map=device_map_for(profile), use_safetensors=True)
    if model.config.pad_token_id is None:  # the head finds the last real token by the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    return JudgeModel(model, tokenizer, model_id)


def gold_reward_fn(profile: Profile, judge: JudgeModel | None = None) -> RewardFn:
    """The reward every stage is measured against: the toy world's ground truth where the profile has one,
    else the independent judge (loaded here unless given)."""
    if profile.has_ground_truth:
        return toyworld.ground_truth_rewards
    return judge or load_judge(profile)
