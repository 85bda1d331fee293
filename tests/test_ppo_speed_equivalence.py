"""Speed-ups of the PPO step must not change its results (issue 14.1).

A few PPO iterations from a fixed seed on the tiny model; every logged statistic and 32 entries of
every trained parameter (LoRA adapter, value head) are compared with golden values recorded with the
code before the speed work (main at e6825d0). Equal within 1e-6: a fused or reordered kernel may move
the last bits of a sum, nothing more. Two configurations cover the branches: the default shape
(2 epochs x 2 minibatches, no entropy bonus) and one update per iteration with an entropy bonus and
the adaptive KL controller.

Record again (only after a change that is *meant* to alter results, and say so in the commit):
    python tests/test_ppo_speed_equivalence.py --record
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "data" / "ppo_speed_golden.json"
CONFIGS = {
    "2x2": dict(num_ppo_epochs=2, num_minibatches=2),
    "1x1_entropy_adaptive_kl": dict(num_ppo_epochs=1, num_minibatches=1, ent_coef=0.01, adaptive_kl=True),
}
STEPS = 3


def run(tiny, tokenizer, changes: dict) -> dict:
    """STEPS PPO iterations from seed 0; the history (without wall times) and the trained parameters."""
    from rlhf_course import toyworld
    from rlhf_course.loading import load_policy
    from rlhf_course.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)  # the LoRA adapter's initialisation
    policy = load_policy(tiny, verbose=False)
    cfg = PPOConfig(batch_size=8, max_new_tokens=16, temperature=0.7, learning_rate=1e-3, steps=STEPS, **changes)
    trainer = PPOTrainer(cfg, policy, tokenizer, toyworld.ground_truth_rewards,
                         [p.text for p in toyworld.train_prompts()])
    history = [{k: v for k, v in trainer.step().items() if not k.startswith("time/")} for _ in range(STEPS)]
    params = {n: p.detach().double() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return {"history": history, "params": {n: fingerprint(p) for n, p in params.items()}}


def fingerprint(p: torch.Tensor, n: int = 32) -> list[float]:
    """n entries spread evenly over the tensor (all of a small one): compared one by one, as a whole
    tensor would be, at a thirtieth of the file size (a sum would add up the harmless last-bit noise)."""
    flat = p.flatten()
    return flat[:: max(1, flat.numel() // n)].tolist()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ppo_steps_match_the_golden_values(tiny, tokenizer, name):
    golden = json.loads(GOLDEN.read_text())[name]
    got = run(tiny, tokenizer, CONFIGS[name])
    assert len(got["history"]) == len(golden["history"]) == STEPS
    for step, (row, want) in enumerate(zip(got["history"], golden["history"]), start=1):
        assert sorted(row) == sorted(want), f"step {step}: logged keys changed"
        for k in want:
            assert math.isclose(row[k], want[k], rel_tol=0, abs_tol=1e-6), f"step {step} {k}: {row[k]!r} != {want[k]!r}"
    assert sorted(got["params"]) == sorted(golden["params"]), "the trained parameters changed"
    for n, want in golden["params"].items():
        assert len(got["params"][n]) == len(want), n
        worst = max(abs(a - b) for a, b in zip(got["params"][n], want))
        assert worst <= 1e-6, f"{n}: differs by {worst:.2e}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    from rlhf_course.loading import load_tokenizer
    from rlhf_course.profiles import Hardware, pick_profile

    torch.set_num_threads(1)
    tiny = pick_profile("tiny", Hardware("cpu", cpu_count=2))
    tok = load_tokenizer(tiny)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({name: run(tiny, tok, c) for name, c in CONFIGS.items()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
