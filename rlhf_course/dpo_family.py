"""The DPO family: what came after DPO, each loss written to be read and checked against TRL.

DPO (Rafailov et al. 2023) turned preference learning into classification on log-probability ratios.
Its successors change one thing each:
  * IPO    (Azar et al. 2023, arXiv:2310.12036): a squared loss, so the gap cannot grow forever -
           `dpo.dpo_loss(loss_type="ipo")`;
  * SimPO  (Meng et al. 2024, arXiv:2405.14734): no reference model; the implicit reward is the
           *length-normalised* log-probability, with a target margin gamma;
  * KTO    (Ethayarajh et al. 2024, arXiv:2402.01306): no pairs; each answer is labelled desirable or
           not, and scored against a reference point, the policy's KL to the reference (prospect theory);
  * ORPO   (Hong et al. 2024, arXiv:2403.07691): no reference model and no separate SFT stage; the SFT
           loss plus a log odds-ratio term that pushes the chosen answer's odds above the rejected one's.

The layers, as for DPO (`dpo.py`):
    1. the losses       simpo_loss, kto_loss (+ kto_kl), orpo_loss     -> (loss, chosen_rewards, rejected_rewards)
    2. a batch          family_batch_loss(model, batch, loss_type)      -> (loss, metrics)
    3. training         train_preference(profile, loss_type, ...)       one small loop for every loss, LoRA

`tests/test_dpo_family.py` proves 1-2 equal to TRL 1.16 on the same batch (to 1e-5): SimPO against
`trl.experimental.cpo.CPOTrainer(loss_type="simpo")`, ORPO against `trl.experimental.orpo.ORPOTrainer`,
KTO against `trl.KTOTrainer`. TRL's `DPOTrainer` has none of the three among its `loss_type`s.
The batch is TRL's `DataCollatorForPreference` layout (`dpo.preference_logps`): rows 0..B-1 prompt+chosen,
rows B..2B-1 prompt+rejected. KTO reads the same rows as 2B unpaired answers: the chosen ones
desirable, the rejected ones not (the KTO paper's own way to compare it with DPO on paired data).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_course import dpo
from rlhf_course.logprobs import completion_logprobs
from rlhf_course.sft import TrainResult

LOSS_TYPES = ("dpo", "ipo", "simpo", "kto", "orpo")
REFERENCE_FREE = ("simpo", "orpo")  # no reference model: one forward pass per step instead of two


# --- 1. the losses --------------------------------------------------------------------------------

def simpo_loss(
    policy_chosen_logps: torch.Tensor,    # (B,) log pi(y_w | x), summed over the answer's tokens
    policy_rejected_logps: torch.Tensor,  # (B,) log pi(y_l | x)
    chosen_lengths: torch.Tensor,         # (B,) |y_w| in tokens
    rejected_lengths: torch.Tensor,       # (B,) |y_l|
    *, beta: float = 2.0, gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO, Eq. 6 of arXiv:2405.14734:
        -log sigmoid(beta / |y_w| log pi(y_w|x) - beta / |y_l| log pi(y_l|x) - gamma)
    The implicit reward is r(x, y) = beta / |y| log pi(y|x) (Eq. 4): the average log-probability of a token,
    the quantity generation ranks answers by, and no reference model. gamma is a target margin (Eq. 5)."""
    B = policy_chosen_logps.shape[0]
    assert policy_chosen_logps.shape == policy_rejected_logps.shape == chosen_lengths.shape \
        == rejected_lengths.shape == (B,), "pass summed log-probs and lengths, one per sequence: (B,)"
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)        # (B,) Eq. 4
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)                # (B,) Eq. 6
    return losses.mean(), chosen_rewards.detach(), rejected_rewards.detach()


def kto_kl(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z_0 = KL(pi || pi_ref), estimated on *mismatched* pairs (x_i, y_j), j != i
    (Sec. 4.1 of arXiv:2402.01306): the batch mean of log pi(y|x) - log pi_ref(y|x), at least 0, with no
    gradient (the paper does not back-propagate through it). Inputs (N,), output a scalar."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,  # (N,) log pi(y|x) of N unpaired answers
    ref_logps: torch.Tensor,     # (N,) log pi_ref(y|x)
    desirable: torch.Tensor,     # (N,) bool: labelled good (True) or bad (False)
    kl: torch.Tensor,            # () the reference point z_0, from kto_kl
    *, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO, Eq. 7-8 of arXiv:2402.01306: with r = log pi(y|x) / pi_ref(y|x) and the reference point z_0,
        v(x, y) = lambda_D sigmoid(beta (r - z_0))   for a desirable y,
                  lambda_U sigmoid(beta (z_0 - r))   for an undesirable y,
        loss = mean over answers of (lambda_y - v(x, y)),
    a sigmoid "value function" that saturates: a gain far above the reference point counts little more
    (prospect theory). Returns the loss and the implicit rewards beta * r of the desirable and of the
    undesirable answers (two tensors of their own lengths)."""
    N = policy_logps.shape[0]
    assert policy_logps.shape == ref_logps.shape == desirable.shape == (N,), "one value per answer: (N,)"
    logratios = policy_logps - ref_logps                                             # (N,) r
    good, bad = desirable.bool(), ~desirable.bool()
    chosen_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios[good] - kl)))
    rejected_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios[bad])))
    losses = torch.cat([chosen_losses, rejected_losses])                            # (N,)
    return losses.mean(), beta * logratios[good].detach(), beta * logratios[bad].detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation (Maechler 2012: two branches around -log 2)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    policy_chosen_logps: torch.Tensor,    # (B,) log P(y_w|x), averaged over the answer's tokens
    policy_rejected_logps: torch.Tensor,  # (B,) log P(y_l|x), averaged
    chosen_nll: torch.Tensor,             # () the SFT loss on the chosen answers (mean NLL per token)
    *, lam: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO, Eq. 6-7 of arXiv:2403.07691: L = L_SFT + lambda * L_OR, with
        odds(y|x) = P(y|x) / (1 - P(y|x))                                   (Eq. 3, P length-normalised)
        L_OR = -log sigmoid(log odds(y_w|x) - log odds(y_l|x))              (Eq. 7)
    log odds = log P - log(1 - P) = logp - log1mexp(logp). No reference model: the SFT term keeps the
    policy on the chosen answers. Returns the loss and, as TRL logs them, lambda * log P of each answer."""
    B = policy_chosen_logps.shape[0]
    assert policy_chosen_logps.shape == policy_rejected_logps.shape == (B,) and chosen_nll.dim() == 0, \
        "pass per-token average log-probs (B,) and a scalar SFT loss"
    log_odds = (policy_chosen_logps - policy_rejected_logps) \
        - (log1mexp(policy_chosen_logps) - log1mexp(policy_rejected_logps))            # (B,)
    or_loss = -F.logsigmoid(log_odds)                                                 # (B,) Eq. 7
    loss = chosen_nll + lam * or_loss.mean()                                          # Eq. 6
    return loss, lam * policy_chosen_logps.detach(), lam * policy_rejected_logps.detach()


# --- 2. the loss of a batch ---------------------------------------------------------------------------

DEFAULTS = {  # the tiny model's settings (measured on the toy world, see `LEARNING_RATES`)
    "dpo": {"beta": 2.0},   # every loss of the family at beta 2, one setting for all (the DPO stage: recipe.dpo_beta)
    "ipo": {"beta": 2.0},   # tau; at 0.5 (a target gap of 1 nat per token) it drifted to KL 9.8 +- 6.3
    "simpo": {"beta": 2.0, "gamma": 1.0},
    "kto": {"beta": 2.0},
    "orpo": {"lam": 1.0},
}
# AdamW learning rate per loss (40 steps of 32 pairs on the tiny model). SimPO has no reference model to
# hold it: at DPO's 3e-3 it left the SFT model's distribution (KL 57 +- 61 nats, gold -0.02 +- 0.38 over
# three seeds); at 1e-3, gold 0.52 at KL 2.8 (two seeds). The SimPO paper also finds the learning rate
# its most sensitive setting (arXiv:2405.14734, Sec. 4).
LEARNING_RATES = {"dpo": 3e-3, "ipo": 3e-3, "simpo": 1e-3, "kto": 3e-3, "orpo": 3e-3}


def _token_logps(model, batch: dict) -> torch.Tensor:
    """(R, T-1) per-token log-probs of the answer tokens of every row (0 elsewhere)."""
    return completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])


def family_batch_loss(model, batch: dict, loss_type: str, **hparams) -> tuple[torch.Tensor, dict]:
    """Any loss of the family on one `DataCollatorForPreference` batch (2B rows, chosen first), with the
    numbers TRL logs under its names. KTO reads any unpaired batch with TRL's KTOTrainer keys: `label`
    (desirable or not, per row) and the mismatched rows `KL_input_ids`, `KL_attention_mask`,
    `KL_completion_mask` (`collate(..., with_kl=True)` adds them). The reference, where a loss has one, is
    the model with its LoRA adapter switched off (`dpo.reference_logps`)."""
    assert loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, not {loss_type!r}"
    hp = {**DEFAULTS[loss_type], **hparams}
    token_logps = _token_logps(model, batch)                                          # (2B, T-1)
    lengths = batch["completion_mask"][:, 1:].sum(dim=1)                               # (2B,)
    chosen_logps, rejected_logps = token_logps.sum(dim=1).chunk(2)                     # (B,), (B,)
    chosen_len, rejected_len = lengths.chunk(2)
    metrics: dict[str, float] = {}
    if loss_type in ("dpo", "ipo"):
        ref_chosen, ref_rejected = dpo.reference_logps(model, batch)
        loss, cr, rr = dpo.dpo_loss(chosen_logps, rejected_logps, ref_chosen, ref_rejected, beta=hp["beta"],
                                    loss_type="sigmoid" if loss_type == "dpo" else "ipo",
                                    chosen_lengths=chosen_len, rejected_lengths=rejected_len)
    elif loss_type == "simpo":
        loss, cr, rr = simpo_loss(chosen_logps, rejected_logps, chosen_len, rejected_len, **hp)
    elif loss_type == "orpo":
        B = len(chosen_len)
        avg = token_logps.sum(dim=1) / lengths.clamp(min=1)                           # (2B,)
        # the SFT term: mean NLL per token of the chosen answers (the ORPO authors' code masks the prompt);
        # TRL's ORPOTrainer counts the prompt's tokens too: nll_on_prompt=True reproduces it
        if hp.pop("nll_on_prompt", False):
            on = batch["attention_mask"][:B, 1:]                                      # (B, T-1)
            chosen_token_logps = completion_logprobs(model, batch["input_ids"][:B], batch["attention_mask"][:B],
                                                     batch["attention_mask"][:B])
        else:
            on = batch["completion_mask"][:B, 1:]
            chosen_token_logps = token_logps[:B]
        chosen_nll = -chosen_token_logps.sum() / on.sum().clamp(min=1)
        loss, cr, rr = orpo_loss(avg[:B], avg[B:], chosen_nll, **hp)
        metrics["nll_loss"] = chosen_nll.item()
    else:  # kto: every row an answer of its own, desirable or not
        desirable = batch["label"].bool()                                              # (R,)
        kl_batch = {k.removeprefix("KL_"): v for k, v in batch.items() if k.startswith("KL_")}
        logps = token_logps.sum(dim=1)                                                 # (R,)
        with torch.no_grad():
            policy_kl = _token_logps(model, kl_batch).sum(dim=1)
            with model.disable_adapter():
                ref_kl = _token_logps(model, kl_batch).sum(dim=1)
                ref_logps = _token_logps(model, batch).sum(dim=1)
        kl = kto_kl(policy_kl, ref_kl)
        loss, cr, rr = kto_loss(logps, ref_logps, desirable, kl, **hp)
        chosen_logps, rejected_logps = logps[desirable], logps[~desirable]
        metrics["kl"] = kl.item()
    metrics |= {"loss": loss.item(), "rewards/chosen": cr.mean().item(), "rewards/rejected": rr.mean().item(),
                "rewards/margins": (cr.mean() - rr.mean()).item(),
                "logps/chosen": chosen_logps.detach().mean().item(),
                "logps/rejected": rejected_logps.detach().mean().item()}
    if loss_type != "kto":  # pairs: how often the implicit reward ranks them as the labeller did
        metrics["rewards/accuracies"] = (cr > rr).float().mean().item()
    return loss, metrics


# --- 3. one small training loop for every loss -------------------------------------------------------

def tokenize_pairs(tokenizer, rows) -> list[dict]:
    """Conversational prompt/chosen/rejected rows -> {"prompt_ids", "chosen_ids", "rejected_ids"}, as TRL's
    DPOTrainer tokenizes them: the chat template over the prompt (assistant turn opened), and over the
    prompt + each answer; the answer's ids are what follows the prompt's (closing <|end|> included)."""
    def ids(messages, generation_prompt=False):
        return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                                  return_dict=True)["input_ids"])

    out = []
    for row in rows:
        prompt = ids(row["prompt"], generation_prompt=True)
        answers = {}
        for key in ("chosen", "rejected"):
            full = ids(row["prompt"] + row[key])
            assert full[: len(prompt)] == prompt, "the chat template must render the prompt as a prefix"
            answers[f"{key}_ids"] = full[len(prompt):]
        out.append({"prompt_ids": prompt, **answers})
    return out


def collate(tokenizer, rows: list[dict], with_kl: bool = False) -> dict:
    """TRL's `DataCollatorForPreference` batch of `rows` (2B rows, chosen first). with_kl adds what KTO
    needs, under TRL's KTOTrainer names: `label` (the first B rows desirable) and `KL_input_ids`,
    `KL_attention_mask`, `KL_completion_mask`, the 2B answers rotated by one over the 2B prompts,
    (x_i, y_{i-1}), as TRL's KTO collator pairs them."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    batch = collator(rows)
    if with_kl:
        B = len(rows)
        answers = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        answers = answers[-1:] + answers[:-1]                            # y_{i-1} for row i
        # row i and row B + i share the prompt x_i: one preference row carries both mismatched answers
        kl = collator([{"prompt_ids": r["prompt_ids"], "chosen_ids": answers[i], "rejected_ids": answers[B + i]}
                       for i, r in enumerate(rows)])
        batch |= {f"KL_{k}": v for k, v in kl.items()}
        batch["label"] = torch.arange(2 * B) < B
    return batch


@dataclass
class FamilyConfig:
    """The loop's knobs: the same for every loss (but the learning rate, see `LEARNING_RATES`), so the table
    compares losses and little else."""

    steps: int = 40                # optimiser steps
    batch_size: int = 32           # pairs per step
    learning_rate: float | None = None  # AdamW on the LoRA adapter; None: LEARNING_RATES[loss_type]
    warmup_ratio: float = 0.1      # linear warmup, then linear decay (as dpo.dpo_config)
    max_grad_norm: float = 1.0
    seed: int = 0


def train_preference(profile, loss_type: str, dataset=None, *, model_id: str | None = None,
                     config: FamilyConfig = FamilyConfig(), progress: bool = False, **hparams) -> TrainResult:
    """Train a fresh LoRA adapter on the (SFT) model with one loss of the family, from scratch: shuffle
    the pairs, collate a batch, `family_batch_loss`, AdamW with warmup and linear decay, gradient clipped.
    `dataset`: prompt/chosen/rejected rows (default: the toy world's training pairs). `hparams` override
    `DEFAULTS[loss_type]`. `metrics["train_seconds"]` times the loop alone."""
    from transformers import get_scheduler

    from rlhf_course.loading import load_policy, load_tokenizer

    assert loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, not {loss_type!r}"
    rows = list(dataset if dataset is not None else dpo.load_dpo_data())
    tokenizer = load_tokenizer(profile, model_id)
    torch.manual_seed(config.seed)  # the adapter's initialisation
    model = load_policy(profile, model_id=model_id, verbose=progress)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate or LEARNING_RATES[loss_type], weight_decay=0.0)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * config.steps),
                              num_training_steps=config.steps)
    rng = random.Random(config.seed)
    order: list[int] = []
    history = []
    model.train()
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_size:  # a fresh shuffle each epoch
            order += rng.sample(range(len(rows)), len(rows))
        idx, order = order[: config.batch_size], order[config.batch_size:]
        batch = collate(tokenizer, tokenize_pairs(tokenizer, [rows[i] for i in idx]), with_kl=loss_type == "kto")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        loss, metrics = family_batch_loss(model, batch, loss_type, **hparams)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, **metrics})
        if progress and (step % 10 == 0 or step == config.steps):
            print(f"{loss_type} step {step}: loss {metrics['loss']:.4f}", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(model, {"train_seconds": seconds, "train_loss": history[-1]["loss"]}, history)
