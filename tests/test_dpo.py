import math

import pytest
import torch

from rlhf_course import dpo
from rlhf_course.loading import load_policy, lora_config


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# --- the loss on hand-made numbers -------------------------------------------------------------

def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = _t(-12.0, -3.5, -40.0)
    loss, chosen_rewards, rejected_rewards = dpo.dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.equal(chosen_rewards, torch.zeros(3)) and torch.equal(rejected_rewards, torch.zeros(3))


def test_dpo_loss_golden_values():
    # chosen log-ratio +1, rejected log-ratio -1: Eq. 7 gives -log sigmoid(beta * 2)
    pc, pr, rc, rr = _t(-1.0, -5.0), _t(-3.0, -2.0), _t(-2.0, -6.0), _t(-2.0, -1.0)
    loss, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)  # 0.313262
    assert cr.tolist() == [0.5, 0.5] and rj.tolist() == [-0.5, -0.5]
    # reversed preference: the loss is larger, and the rewards rank the pair the wrong way
    loss_rev, cr_rev, rj_rev = dpo.dpo_loss(pr, pc, rr, rc, beta=0.5)
    assert loss_rev.item() == pytest.approx(math.log1p(math.e), abs=1e-6)  # 1.313262
    assert (cr_rev < rj_rev).all()


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = _t(-4.0, -9.0).requires_grad_(), _t(-6.0, -2.0).requires_grad_()
    loss, _, _ = dpo.dpo_loss(pc, pr, _t(-5.0, -8.0), _t(-5.0, -3.0), beta=0.1)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # gradient descent raises log pi(y_w), lowers log pi(y_l)
    assert torch.allclose(pc.grad, -pr.grad)


def test_ipo_loss_golden_values_with_and_without_length_normalisation():
    pc, pr, rc, rr = _t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0)  # log-ratios +1 and -1
    loss, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx((2.0 - 1.0) ** 2)  # Eq. 17: (h - 1/(2 tau))^2, h = 2, tau = 0.5
    loss_n, cr_n, rj_n = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo",
                                      chosen_lengths=_t(2.0), rejected_lengths=_t(4.0))
    assert loss_n.item() == pytest.approx((0.5 + 0.25 - 1.0) ** 2)  # TRL's per-token log-ratios
    # the implicit rewards are not length-normalised (as TRL logs them)
    assert cr.item() == cr_n.item() == 0.5 and rj.item() == rj_n.item() == -0.5


def test_dpo_loss_rejects_wrong_shapes_and_unknown_loss():
    with pytest.raises(AssertionError, match=r"\(B,\)"):
        dpo.dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(AssertionError, match="loss_type"):
        dpo.dpo_loss(_t(0.0), _t(0.0), _t(0.0), _t(0.0), loss_type="hinge")


# --- the same numbers as TRL's DPOTrainer ------------------------------------------------------

@pytest.fixture(scope="module")
def pairs():
    return dpo.keep_dpo_columns(dpo.load_dpo_data()).select(range(64))


def _trl_trainer(profile, tokenizer, pairs, **config):
    from trl import DPOTrainer

    args = dpo.dpo_config(profile, steps=1, progress=False, **config)
    return DPOTrainer(model=load_policy(profile, lora=False, verbose=False), args=args, train_dataset=pairs,
                      processing_class=tokenizer, peft_config=lora_config(profile))


def _perturb_adapter(model):
    with torch.no_grad():  # a fresh adapter is the identity (B = 0): make the policy differ from the reference
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.5)])
def test_loss_and_rewards_equal_trl(tiny, tokenizer, pairs, loss_type, beta):
    trainer = _trl_trainer(tiny.replace(batch_size=8), tokenizer, pairs, beta=beta, loss_type=loss_type)
    model = trainer.model
    _perturb_adapter(model)
    batch = next(iter(trainer.get_train_dataloader()))  # made by TRL's DataCollatorForPreference
    assert batch["input_ids"].shape[0] == 16 and batch["completion_mask"][:, 0].sum() == 0

    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)  # TRL's fused LM head (fused_lm_head=True)
        ours, metrics = dpo.dpo_batch_loss(model, batch, beta=beta, loss_type=loss_type)
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert abs(metrics["rewards/margins"]) > 1e-3, "policy and reference should differ in this test"
    logged = trainer._metrics["eval"]  # what TRL logs for this batch
    for key in dpo.LOGGED[1:]:
        assert metrics[key] == pytest.approx(logged[key][-1], abs=1e-5), key


def test_reference_is_the_model_with_its_adapter_off(tiny, tokenizer):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    model = load_policy(tiny, verbose=False)
    _perturb_adapter(model)
    rows = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 1], "rejected_ids": [10, 1]},
            {"prompt_ids": [5, 6], "chosen_ids": [11, 1], "rejected_ids": [12, 13, 14, 1]}]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(rows)
    chosen, rejected = dpo.preference_logps(model, batch)
    ref_chosen, ref_rejected = dpo.reference_logps(model, batch)
    assert chosen.shape == rejected.shape == (2,) and chosen.requires_grad and not ref_chosen.requires_grad
    assert not torch.allclose(chosen, ref_chosen)
    base = load_policy(tiny, lora=False, verbose=False)  # the model we started from, no adapter at all
    base_chosen, base_rejected = dpo.preference_logps(base, batch)
    assert torch.allclose(base_chosen, ref_chosen, atol=1e-5) and torch.allclose(base_rejected, ref_rejected, atol=1e-5)
    assert [t.tolist() for t in dpo.completion_lengths(batch)] == [[3, 2], [2, 4]]


# --- training through TRL ----------------------------------------------------------------------

def test_train_dpo_lowers_the_loss_and_changes_the_adapter(tiny, tokenizer, pairs):
    profile = tiny.replace(batch_size=8)
    result = dpo.train_dpo(profile, pairs, steps=8, progress=False)  # the tiny profile's beta and learning rate
    model = result.model
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "the adapter did not move from its zero init"
    assert len(result.history) == 8 and all(k in result.history[-1] for k in dpo.LOGGED)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as its reference
    # on training pairs, the trained policy's implicit reward now prefers the chosen answers
    batch = next(iter(_trl_trainer(profile, tokenizer, pairs).get_train_dataloader()))
    with torch.no_grad():
        loss, metrics = dpo.dpo_batch_loss(model, batch, beta=profile.recipe.dpo_beta)
    assert loss.item() < math.log(2) - 0.05
    assert metrics["rewards/margins"] > 0 and metrics["rewards/accuracies"] > 0.5


def test_train_dpo_in_4bit_on_cpu(tiny, pairs):
    import bitsandbytes as bnb

    profile = tiny.replace(batch_size=4)
    result = dpo.train_dpo(profile, pairs.select(range(16)), steps=3, load_in_4bit=True, progress=False)
    model = result.model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, _ in trainable)
    # TRL casts adapters on a quantized base to bf16; on a fp32 (or fp16) profile we keep them fp32
    assert all(p.dtype == torch.float32 for _, p in trainable)
    assert any(p.abs().sum() > 0 for n, p in trainable if "lora_B" in n)
    assert all(math.isfinite(h["loss"]) for h in result.history) and "rewards/margins" in result.history[-1]
