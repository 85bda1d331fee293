"""GRPO and RLOO through TRL on the tiny model: the reward adapter, the prompt data, short runs."""

import math

import pytest
import torch

from rlhf_course import toyworld
from rlhf_course.grpo import prompt_dataset, train_grpo, trl_reward_func
from rlhf_course.sampling import Completion

EOS = 7


def test_trl_reward_func_adapts_our_protocol():
    seen = {}

    def my_reward(prompts, completions):
        seen["prompts"], seen["completions"] = prompts, completions
        return [1.0, 2.0]

    f = trl_reward_func(my_reward, [EOS])
    assert f.__name__ == "my_reward"  # TRL logs it as rewards/my_reward/mean
    prompts = [[{"role": "user", "content": "how do i cook rice ?"}]] * 2
    # how TRL calls a reward function for conversational prompts (plus extra dataset columns)
    out = f(prompts=prompts, completions=[[{"role": "assistant", "content": " rinse the rice . "}],
                                          [{"role": "assistant", "content": "rinse"}]],
            completion_ids=[[11, 12, EOS], [11, 12, 13, 14]], trainer_state=None, log_metric=print)
    assert out == [1.0, 2.0] and seen["prompts"] is prompts
    assert seen["completions"] == [Completion("rinse the rice .", True, 3), Completion("rinse", False, 4)]


def test_trl_reward_func_gives_the_ground_truth():
    p = toyworld.train_prompts()[0]
    answer = toyworld.best_response(p)
    f = trl_reward_func(toyworld.ground_truth_rewards, [EOS])
    prompts = [[{"role": "user", "content": p.text}]] * 2
    ended, cut = f(prompts=prompts, completions=[[{"role": "assistant", "content": answer}]] * 2,
                   completion_ids=[[1, 2, EOS], [1, 2, 3]])
    assert ended == pytest.approx(toyworld.reward(p, answer, ended=True))
    assert cut == pytest.approx(toyworld.reward(p, answer, ended=False))
    assert ended > cut  # an answer cut at the length limit is penalised by the ground truth


def test_prompt_dataset_is_conversational():
    data = prompt_dataset()
    assert len(data) == len(toyworld.train_prompts())
    assert data[0] == {"prompt": [{"role": "user", "content": toyworld.train_prompts()[0].text}]}
    assert prompt_dataset(["hi ?"])[0]["prompt"] == [{"role": "user", "content": "hi ?"}]


def test_unknown_algorithm_is_refused(tiny):
    with pytest.raises(ValueError, match="grpo, rloo"):
        train_grpo(tiny, algorithm="ppo")


def lora_b_norm(model) -> float:
    return sum(p.detach().float().norm().item() for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_train_runs_logs_a_reward_and_changes_the_adapter(tiny, algorithm):
    # 16 completions per step = 4 prompts x 4 answers, at most 32 new tokens: a quick smoke run
    profile = tiny.replace(batch_size=16, max_new_tokens=32)
    result = train_grpo(profile, algorithm=algorithm, steps=3, num_generations=4, progress=False)
    assert [h["step"] for h in result.history] == [1, 2, 3]
    for h in result.history:
        assert -2.0 < h["reward"] < 1.0  # the ground truth's range, averaged over the step's answers
        assert "kl" in h and h["completions/max_length"] <= 32
    assert result.history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh LoRA adapter is the reference
    assert result.metrics["completions_per_step"] == 16
    assert math.isfinite(result.metrics["seconds_per_step"])
    assert lora_b_norm(result.model) > 0  # LoRA's B starts at zero: non-zero means the adapter was trained


def test_train_grpo_4bit_keeps_the_adapter_in_fp32(tiny):
    profile = tiny.replace(batch_size=8, max_new_tokens=16)
    result = train_grpo(profile, steps=2, num_generations=4, load_in_4bit=True, progress=False)
    trainable = [p for p in result.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # TRL would have made them bf16
    assert len(result.history) == 2 and lora_b_norm(result.model) > 0
