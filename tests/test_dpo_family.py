"""The DPO family (SimPO, KTO, ORPO): golden values from the papers' formulas, and equality with TRL 1.16's
implementations on the same batch (SimPO: trl.experimental.cpo; ORPO: trl.experimental.orpo; KTO: trl.KTOTrainer)."""

import math

import pytest
import torch

from rlhf_course import dpo
from rlhf_course import dpo_family as fam
from rlhf_course.loading import load_policy, lora_config
from rlhf_course.sft import trl_common_args


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# --- the formulas on hand-computed values -------------------------------------------------------------

def test_simpo_loss_golden_values():
    # per-token averages -1 (chosen: -4 over 4 tokens) and -2 (rejected: -6 over 3 tokens)
    loss, cr, rr = fam.simpo_loss(_t(-4.0), _t(-6.0), _t(4.0), _t(3.0), beta=2.0, gamma=1.0)
    assert cr.item() == pytest.approx(-2.0) and rr.item() == pytest.approx(-4.0)  # beta * average log-prob
    assert loss.item() == pytest.approx(math.log1p(math.exp(-(2.0 - 1.0))), abs=1e-6)  # -log sigmoid(2 - gamma)
    # the same sums with longer answers: SimPO's reward is per token, so the margin changes
    loss_long, _, _ = fam.simpo_loss(_t(-4.0), _t(-6.0), _t(8.0), _t(3.0), beta=2.0, gamma=1.0)
    assert loss_long.item() < loss.item()


def test_kto_loss_golden_values():
    logps, ref = _t(-3.0, -5.0, -4.0), _t(-4.0, -4.0, -4.0)  # log-ratios +1, -1, 0
    desirable = torch.tensor([True, False, True])
    kl = torch.tensor(0.5)
    loss, cr, rr = fam.kto_loss(logps, ref, desirable, kl, beta=2.0)
    want = [1 - 1 / (1 + math.exp(-2.0 * (1 - 0.5))), 1 - 1 / (1 + math.exp(-2.0 * (0 - 0.5))),
            1 - 1 / (1 + math.exp(-2.0 * (0.5 + 1)))]  # desirable +1, desirable 0, undesirable -1
    assert loss.item() == pytest.approx(sum(want) / 3, abs=1e-6)
    assert cr.tolist() == [2.0, 0.0] and rr.tolist() == [-2.0]
    # the reference point: a batch mean of mismatched log-ratios, never below 0, no gradient
    policy = _t(-1.0, -3.0).requires_grad_()
    assert fam.kto_kl(policy, _t(-2.0, -1.0)).item() == 0.0  # mean -0.5 clamps to 0
    z = fam.kto_kl(policy, _t(-2.0, -5.0))
    assert z.item() == pytest.approx(1.5) and not z.requires_grad


def test_orpo_loss_golden_values():
    pc, pr = _t(math.log(0.5)), _t(math.log(0.2))        # per-token average probabilities 0.5 and 0.2
    log_odds = math.log(0.5 / 0.5) - math.log(0.2 / 0.8)  # odds 1 vs 1/4
    loss, cr, rr = fam.orpo_loss(pc, pr, torch.tensor(0.7), lam=0.5)
    assert loss.item() == pytest.approx(0.7 + 0.5 * math.log1p(math.exp(-log_odds)), abs=1e-6)
    assert cr.item() == pytest.approx(0.5 * math.log(0.5)) and rr.item() == pytest.approx(0.5 * math.log(0.2))
    # log1mexp is stable on both sides of -log 2
    x = _t(-1e-6, -0.5, -0.7, -30.0)
    assert torch.allclose(fam.log1mexp(x.double()), torch.log(1 - torch.exp(x.double())), rtol=1e-6)


def test_losses_push_the_chosen_answer_up():
    pc, pr = _t(-4.0, -9.0).requires_grad_(), _t(-6.0, -2.0).requires_grad_()
    fam.simpo_loss(pc, pr, _t(4.0, 5.0), _t(3.0, 2.0))[0].backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    pc, pr = _t(-1.0, -2.0).requires_grad_(), _t(-1.5, -0.5).requires_grad_()
    fam.orpo_loss(pc, pr, torch.tensor(0.0), lam=1.0)[0].backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


# --- equal to TRL on the same batch ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pairs():
    return dpo.keep_dpo_columns(dpo.load_dpo_data()).select(range(64))


def _perturb(model, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)


def _ours_from_concatenated(cat: dict) -> dict:
    """TRL's CPO/ORPO concatenated batch in our layout: the answer's tokens are those with a label."""
    return {"input_ids": cat["concatenated_input_ids"], "attention_mask": cat["concatenated_attention_mask"],
            "completion_mask": (cat["concatenated_labels"] != -100).long()}


def test_simpo_equals_trl_cpo_trainer(tiny, tokenizer, pairs):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    profile = tiny.replace(batch_size=8)
    args = CPOConfig(**trl_common_args(profile, 1, None, False), loss_type="simpo", cpo_alpha=0.0, beta=2.0,
                     simpo_gamma=1.0, max_length=profile.max_length)
    trainer = CPOTrainer(model=load_policy(profile, lora=False, verbose=False), args=args, train_dataset=pairs,
                         processing_class=tokenizer, peft_config=lora_config(profile))
    model = trainer.model
    _perturb(model)
    model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, batch, "eval")
        ours = _ours_from_concatenated(trainer.concatenated_inputs(batch, padding_value=trainer.pad_token_id))
        loss, metrics = fam.family_batch_loss(model, ours, "simpo", beta=2.0, gamma=1.0)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[key] == pytest.approx(float(trl_metrics[f"eval_{key}"]), abs=1e-5), key
    assert abs(metrics["rewards/margins"]) > 1e-3


def test_orpo_equals_trl_orpo_trainer(tiny, tokenizer, pairs):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    profile = tiny.replace(batch_size=8)
    args = ORPOConfig(**trl_common_args(profile, 1, None, False), beta=0.5, max_length=profile.max_length)
    trainer = ORPOTrainer(model=load_policy(profile, lora=False, verbose=False), args=args, train_dataset=pairs,
                          processing_class=tokenizer, peft_config=lora_config(profile))
    model = trainer.model
    _perturb(model)
    model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, batch, "eval")
        ours = _ours_from_concatenated(trainer.concatenated_inputs(batch, padding_value=trainer.padding_value))
        loss, metrics = fam.family_batch_loss(model, ours, "orpo", lam=0.5, nll_on_prompt=True)  # TRL's NLL
        loss_answer_only, _ = fam.family_batch_loss(model, ours, "orpo", lam=0.5)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "nll_loss"):
        assert metrics[key] == pytest.approx(float(trl_metrics[f"eval_{key}"]), abs=1e-5), key
    # our default SFT term counts the answer's tokens only, as the ORPO authors' code: a different number
    assert abs(loss_answer_only.item() - loss.item()) > 1e-3


def _unpaired(pairs):
    """Each pair gives one answer, chosen and rejected in turn: batches with both labels."""
    import datasets

    return datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen" if i % 2 == 0 else "rejected"],
                                        "label": i % 2 == 0} for i, r in enumerate(pairs)])


def _worse_reference(model):
    """Perturb the adapter by Delta, then take Delta out of the base weights: the policy (adapter on) is the
    tiny model itself, the reference (adapter off) a damaged copy. A random adapter alone makes the policy
    the damaged one, its KL estimate on mismatched answers negative, and KTO's clamp(min=0) hides it."""
    from peft.tuners.lora import LoraLayer

    _perturb(model, scale=0.1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                module.base_layer.weight -= module.get_delta_weight("default")


def test_kto_equals_trl_kto_trainer(tiny, tokenizer, pairs):
    from trl import KTOConfig, KTOTrainer

    profile = tiny.replace(batch_size=8)
    args = KTOConfig(**trl_common_args(profile, 1, None, False), beta=0.5, max_length=profile.max_length)
    trainer = KTOTrainer(model=load_policy(profile, lora=False, verbose=False), args=args,
                         train_dataset=_unpaired(pairs), processing_class=tokenizer, peft_config=lora_config(profile))
    model = trainer.model
    _worse_reference(model)
    model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    assert 0 < batch["label"].sum() < len(batch["label"])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)
        loss, metrics = fam.family_batch_loss(model, batch, "kto", beta=0.5)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert metrics["kl"] > 0.1, "the reference point should be above 0 in this test"
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert metrics[key] == pytest.approx(logged[key], abs=1e-4 if key.startswith("logps") else 1e-5), key


# --- our batches and our loop ----------------------------------------------------------------------------

def test_tokenize_pairs_matches_trl_dpo_trainer(tiny, tokenizer, pairs):
    from trl import DPOTrainer

    args = dpo.dpo_config(tiny.replace(batch_size=8), steps=1, progress=False)
    trainer = DPOTrainer(model=load_policy(tiny, lora=False, verbose=False), args=args, train_dataset=pairs,
                         processing_class=tokenizer, peft_config=lora_config(tiny))
    ours = fam.tokenize_pairs(tokenizer, pairs.select(range(8)))
    theirs = trainer.train_dataset.select(range(8))
    for a, b in zip(ours, theirs):
        assert a == {k: list(b[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}


def test_collate_adds_ktos_mismatched_rows(tokenizer, pairs):
    rows = fam.tokenize_pairs(tokenizer, pairs.select(range(3)))
    batch = fam.collate(tokenizer, rows, with_kl=True)
    assert batch["input_ids"].shape[0] == batch["KL_input_ids"].shape[0] == 6
    assert batch["label"].tolist() == [True] * 3 + [False] * 3
    answers = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    for i in range(6):  # row i pairs prompt i with the answer of row i - 1
        ids = batch["KL_input_ids"][i][batch["KL_completion_mask"][i].bool()].tolist()
        assert ids == answers[i - 1]


@pytest.mark.parametrize("loss_type", fam.LOSS_TYPES)
def test_train_preference_lowers_the_loss_and_moves_the_adapter(tiny, pairs, loss_type):
    result = fam.train_preference(tiny, loss_type, pairs, config=fam.FamilyConfig(steps=6, batch_size=8))
    assert len(result.history) == 6 and all(math.isfinite(h["loss"]) for h in result.history)
    assert any(p.abs().sum() > 0 for n, p in result.model.named_parameters() if "lora_B" in n)
    if loss_type in ("dpo", "kto"):  # the policy starts as its reference: DPO log 2, KTO 1 - sigmoid(0) = 0.5
        assert result.history[0]["loss"] == pytest.approx(math.log(2) if loss_type == "dpo" else 0.5, abs=1e-4)
    assert result.metrics["train_seconds"] > 0

