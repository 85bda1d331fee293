"""Log-probabilities of given tokens under a causal LM: the quantity every RLHF loss is built on
(PPO's ratios and KL, DPO's implicit reward, evaluation's KL to the reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(labels[t] | ...) from logits (B, T, V) and labels (B, T) -> (B, T).
    The caller aligns them: logits at position t predict labels at t (already shifted)."""
    assert logits.shape[:2] == labels.shape, f"logits {tuple(logits.shape)} vs labels {tuple(labels.shape)}"
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # fp32: fp16 log-softmax loses the tails
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def sequence_logprob(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(completion | prompt) of each sequence from the logits of its forward pass: the sum over the
    completion's tokens of log_softmax(logits)[t] at token t + 1 (the logits at t predict token t + 1).

    logits: (B, T, V); input_ids, completion_mask: (B, T), 1 on the completion's tokens. Returns (B,)."""
    return (token_logprobs(logits[:, :-1], input_ids[:, 1:]) * completion_mask[:, 1:]).sum(dim=1)


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        completion_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the completion part of each sequence.

    input_ids, attention_mask, completion_mask: (B, T); completion_mask is 1 on the answer tokens.
    Returns (B, T-1): entry t is log p(input_ids[t+1]), zeroed where input_ids[t+1] is not completion.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    logps = token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature)                      # (B, T-1)
    return logps * completion_mask[:, 1:]


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(completion | prompt) summed over the completion's tokens: (B,)."""
    return completion_logprobs(model, input_ids, attention_mask, completion_mask).sum(dim=1)
