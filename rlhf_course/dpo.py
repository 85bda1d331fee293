"""Direct Preference Optimization (DPO, Rafailov et al. 2023, arXiv:2305.18290): learn from preference
pairs with a classification loss, no reward model and no sampling.

DPO's insight: the KL-regularised RL objective has a closed-form optimum, pi*(y|x) ∝ pi_ref(y|x)
exp(r(x, y) / beta), so a policy defines an *implicit reward* r(x, y) = beta log pi(y|x) / pi_ref(y|x)
(up to a term that depends on x only). Putting that reward into the Bradley-Terry likelihood of the
labels gives a loss on log-probabilities alone (Eq. 7). The layers, as notebook 7 builds them:

    1. log-probs of a batch      preference_logps(model, batch)      -> (chosen_logps, rejected_logps)
       the reference's           reference_logps(model, batch)       (the same model, LoRA adapter off)
    2. the loss                  dpo_loss(...)                       -> (loss, chosen_rewards, rejected_rewards)
    3. a batch                   dpo_batch_loss(model, batch, ...)   -> (loss, metrics named as TRL logs them)
    4. training                  train_dpo(profile, ...)             TRL's DPOTrainer with LoRA

1-3 are written from scratch to be read; `tests/test_dpo.py` checks them against TRL's `DPOTrainer`
(to 1e-5) on the batches TRL's own collator makes. 4 trains with TRL itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_course.loading import load_tokenizer, policy_for_trainer, reference_policy
from rlhf_course.logprobs import sequence_logprobs
from rlhf_course.paths import data_path
from rlhf_course.profiles import Profile
from rlhf_course.training import TrainResult, run_trl_trainer, steps_or_default, trl_common_args

LOSS_TYPES = ("sigmoid", "ipo")

# What TRL logs at each logging step, and `train_dpo` keeps in `history` (notebook 7 plots them).
LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
          "logps/chosen", "logps/rejected")

BETA = 0.1  # the DPO paper's usual value; the from-scratch functions default to it. `train_dpo` takes
            # its beta and learning rate from the profile's recipe (`profile.recipe.dpo_beta`, ...).


# --- 1. log-probabilities of a preference batch -------------------------------------------------

def preference_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_w | x) and log pi(y_l | x), each (B,), summed over the answer's tokens.

    `batch` is what TRL's `DataCollatorForPreference` makes: `input_ids`, `attention_mask` and
    `completion_mask`, each (2B, T), right-padded; rows 0..B-1 are prompt+chosen, rows B..2B-1 are
    prompt+rejected, and `completion_mask` is 1 on the answer tokens (the closing <|end|> included).
    One forward pass for both halves, as TRL does ("concatenated forward").
    """
    input_ids, attention_mask, completion_mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    assert input_ids.shape == attention_mask.shape == completion_mask.shape and input_ids.shape[0] % 2 == 0
    logps = sequence_logprobs(model, input_ids, attention_mask, completion_mask)  # (2B,)
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)                         # (B,), (B,)
    return chosen_logps, rejected_logps


@torch.no_grad()
def reference_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The same log-probs under the reference policy pi_ref: the model with its LoRA adapter switched
    off, i.e. the frozen model we started from (on a 4-bit base, the SFT adapter's frozen copy: see
    `loading.reference_policy`). No second copy of the model in memory."""
    with reference_policy(model):
        return preference_logps(model, batch)


def completion_lengths(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of answer tokens of the chosen and of the rejected answers: (B,), (B,). IPO needs them."""
    return batch["completion_mask"].sum(dim=1).chunk(2, dim=0)


# --- 2. the loss --------------------------------------------------------------------------------

def dpo_loss(
    policy_chosen_logps: torch.Tensor,    # (B,) log pi(y_w | x)
    policy_rejected_logps: torch.Tensor,  # (B,) log pi(y_l | x)
    ref_chosen_logps: torch.Tensor,       # (B,) log pi_ref(y_w | x)
    ref_rejected_logps: torch.Tensor,     # (B,) log pi_ref(y_l | x)
    *,
    beta: float = BETA,
    loss_type: str = "sigmoid",
    chosen_lengths: torch.Tensor | None = None,    # (B,) answer tokens; IPO only
    rejected_lengths: torch.Tensor | None = None,  # (B,)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of a batch of pairs, and the implicit rewards of both answers (detached, (B,)).

    sigmoid: -log sigmoid(beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)])   (DPO, Eq. 7)
    ipo:     ([log pi/pi_ref (y_w) - log pi/pi_ref (y_l)] - 1 / (2 beta))^2     (IPO, Eq. 17; beta is tau)
    """
    B = policy_chosen_logps.shape[0]
    assert policy_chosen_logps.shape == policy_rejected_logps.shape == ref_chosen_logps.shape \
        == ref_rejected_logps.shape == (B,), "pass summed log-probs, one per sequence: (B,)"
    assert loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, not {loss_type!r}"

    chosen_logratios = policy_chosen_logps - ref_chosen_logps        # (B,) log pi(y_w|x) / pi_ref(y_w|x)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,) log pi(y_l|x) / pi_ref(y_l|x)

    if loss_type == "sigmoid":
        # DPO, Eq. 7 of arXiv:2305.18290: the Bradley-Terry log-likelihood of the label, with the
        # implicit reward beta * log-ratio in place of a reward model's score
        logits = beta * (chosen_logratios - rejected_logratios)      # (B,)
        losses = -F.logsigmoid(logits)                               # (B,)
    else:
        # IPO, Eq. 17 of arXiv:2310.12036: regress the log-ratio gap onto 1 / (2 tau), with tau = beta;
        # a squared loss cannot push the gap to infinity, which Eq. 7 does on deterministic labels.
        chosen_scores, rejected_scores = chosen_logratios, rejected_logratios
        if chosen_lengths is not None and rejected_lengths is not None:
            # TRL divides each log-ratio by its answer's length (a per-token average) before the gap,
            # a choice it confirmed with the IPO authors; we do the same when lengths are given, so the
            # result equals TRL's `loss_type="ipo"` exactly. Without lengths: Eq. 17 as printed.
            chosen_scores = chosen_logratios / chosen_lengths.clamp(min=1)
            rejected_scores = rejected_logratios / rejected_lengths.clamp(min=1)
        h = chosen_scores - rejected_scores                          # (B,) h_pi(y_w, y_l, x)
        losses = (h - 1 / (2 * beta)) ** 2                           # (B,)

    # DPO, Sec. 5 of arXiv:2305.18290: the implicit reward r(x, y) = beta * log pi(y|x) / pi_ref(y|x),
    # never length-normalised (also for IPO), as TRL logs it
    chosen_rewards = beta * chosen_logratios.detach()                # (B,)
    rejected_rewards = beta * rejected_logratios.detach()            # (B,)
    return losses.mean(), chosen_rewards, rejected_rewards


# --- 3. the loss of a batch, with TRL's diagnostics ---------------------------------------------

def dpo_batch_loss(model, batch: dict, *, beta: float = BETA, loss_type: str = "sigmoid") -> tuple[torch.Tensor, dict]:
    """DPO on one collated batch: policy and reference log-probs, the loss, and the numbers TRL logs
    under the same names (`rewards/chosen`, `rewards/margins`, ...), averaged over the batch."""
    chosen_logps, rejected_logps = preference_logps(model, batch)
    ref_chosen_logps, ref_rejected_logps = reference_logps(model, batch)
    chosen_lengths, rejected_lengths = completion_lengths(batch)
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta, loss_type=loss_type,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    metrics = {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        # how often the implicit reward ranks the pair as the labeller did
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": chosen_logps.detach().mean().item(),
        "logps/rejected": rejected_logps.detach().mean().item(),
    }
    return loss, metrics


# --- 4. training with TRL's DPOTrainer ----------------------------------------------------------

def load_dpo_data(path=None):
    """The toy world's training pairs (conversational prompt/chosen/rejected), or a JSONL file of pairs."""
    from rlhf_course.preferences import load_preferences

    return load_preferences(str(path or data_path("toy", "preferences_train.jsonl")))


def keep_dpo_columns(dataset):
    """Drop columns DPO does not use (our `p_chosen`, a `margin`): TRL tokenizes prompt/chosen/rejected."""
    keep = {"prompt", "chosen", "rejected", "images", "image", "tools", "chat_template_kwargs"}
    return dataset.remove_columns([c for c in dataset.column_names if c not in keep])


def dpo_config(profile: Profile, *, steps: int | None = None, beta: float | None = None, loss_type: str = "sigmoid",
               learning_rate: float | None = None, out_dir: str | None = None, progress: bool = True,
               seed: int = 0, checkpoint_dir=None, save_every: int | None = None):
    """TRL's `DPOConfig` for the profile (precision, batch and lengths from the profile; beta and
    learning rate from its recipe unless given)."""
    from trl import DPOConfig

    steps = steps_or_default(steps, profile.dpo_steps)
    return DPOConfig(
        **trl_common_args(profile, steps, out_dir, progress, seed, checkpoint_dir=checkpoint_dir, save_every=save_every),
        learning_rate=learning_rate or profile.recipe.dpo_learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 10),
        beta=beta or profile.recipe.dpo_beta,
        loss_type=[loss_type],
        max_length=profile.max_length,  # prompt + answer; TRL has no separate prompt limit
    )



def train_dpo(profile: Profile, dataset=None, *, model_id: str | None = None, steps: int | None = None,
              beta: float | None = None, loss_type: str = "sigmoid", learning_rate: float | None = None,
              load_in_4bit: bool | None = None, out_dir: str | None = None, progress: bool = True,
              seed: int = 0, checkpoint_dir=None, resume: bool = False, save_every: int | None = None) -> TrainResult:
    """Train a LoRA adapter on preference pairs with TRL's `DPOTrainer`.

    Starts from `model_id` (normally the merged SFT model; default: the profile's model). The reference
    policy is that same model with the adapter disabled, so only one copy is in memory. `dataset`:
    prompt/chosen/rejected pairs, plain or conversational (default: the toy world's 4000 training
    pairs). `beta` and `learning_rate` default to the profile's recipe, `steps` to
    `profile.dpo_steps`. `history` holds TRL's log at each logging step: loss, rewards/chosen,
    rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, ...
    With `checkpoint_dir` (e.g. a Drive folder in Colab) checkpoints are kept there every `save_every`
    steps, and `resume=True` continues from the last one, ending exactly as an uninterrupted run.

    The 7b profile runs the same code with other numbers (its recipe: beta 0.01, learning rate 5e-6, from
    alignment-handbook's zephyr QLoRA DPO recipe; 100 steps of 4 x 4 pairs of a real preference set). The base is
    loaded in 4-bit NF4 with double quantisation (`profile.load_in_4bit`) and prepared by peft's
    `prepare_model_for_kbit_training` (its non-quantized weights upcast to fp32, gradient checkpointing
    on); only the LoRA adapter trains. Compute runs in the profile's dtype: bf16 on GPUs that have it;
    on a T4, fp16 mixed precision (`fp16=True`: autocast and loss scaling) with the LoRA weights kept
    in fp32. That matters: DPO in pure fp16 (fp16 trainable weights, no fp32 copy) is known to
    collapse, the loss stuck at 0. Dtypes of the adapter: peft's `get_peft_model` upcasts fp16/bf16
    adapter weights to fp32 (`autocast_adapter_dtype=True`), but TRL's DPOTrainer then, for a
    quantized base only, casts every trainable parameter to bf16 by hand (the QLoRA paper's choice;
    peft's `autocast_adapter_dtype=False` does not support quantized models, peft#2889). On a T4
    that would train bf16 weights on a GPU without bf16, so `loading.keep_trainable_fp32` casts them
    back to fp32 unless the profile computes in bf16. The same path runs on the tiny model with
    `load_in_4bit=True` on a CPU (fp32 compute, fp32 adapter), which is how the tests cover it.
    """
    from trl import DPOTrainer

    tokenizer = load_tokenizer(profile, model_id)
    # the merged SFT model + a fresh adapter, or (7b) the SFT adapter itself, continued, with its frozen copy as pi_ref
    model, peft_config = policy_for_trainer(profile, model_id, load_in_4bit)
    args = dpo_config(profile, steps=steps, beta=beta, loss_type=loss_type, learning_rate=learning_rate,
                      out_dir=out_dir, progress=progress, seed=seed, checkpoint_dir=checkpoint_dir,
                      save_every=save_every)
    trainer = DPOTrainer(model=model, args=args, train_dataset=keep_dpo_columns(dataset or load_dpo_data()),
                         processing_class=tokenizer, peft_config=peft_config)
    out, history = run_trl_trainer(trainer, profile, progress=progress, desc="DPO", checkpoint_dir=checkpoint_dir, resume=resume,
                                   keep_bf16_adapters=True)
    last = history[-1] if history else {}
    metrics = {"train_loss": out.training_loss, **{k: last[k] for k in LOGGED[1:] if k in last}}
    return TrainResult(trainer.model, metrics, history)
