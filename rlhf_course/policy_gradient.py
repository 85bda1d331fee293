"""The policy-gradient loss (notebook 2): REINFORCE with a baseline.

    loss = reinforce_loss(logprobs, returns, baseline)   # -mean (G - b) log pi(a | s)

Williams 1992 ("Simple statistical gradient-following algorithms", the REINFORCE estimator); the
baseline keeps the gradient unbiased as long as it does not depend on the action (Sutton & Barto,
section 13.4). Every RLHF policy loss of the course (PPO's clipped surrogate, GRPO, RLOO) refines it.
"""

from __future__ import annotations

import torch


def reinforce_loss(logprobs: torch.Tensor, returns: torch.Tensor, baseline) -> torch.Tensor:
    """REINFORCE's surrogate loss: -mean_i (G_i - b_i) * log pi(a_i | s_i); its gradient is the policy gradient.

    logprobs: (B,) log pi of the actions taken (with their graph); returns: (B,) the returns G;
    baseline: a float or a (B,) tensor (a learned value: it gets no gradient from this loss). Returns ()."""
    assert logprobs.shape == returns.shape, f"logprobs {tuple(logprobs.shape)} vs returns {tuple(returns.shape)}"
    advantages = (returns - baseline).detach()   # (B,) a constant weight for the policy's update
    return -(advantages * logprobs).mean()
