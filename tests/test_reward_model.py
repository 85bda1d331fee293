import math

import datasets
import pytest
import torch

from rlhf_course import toyworld
from rlhf_course.loading import load_reward_model, load_tokenizer
from rlhf_course.reward_model import (bradley_terry_loss, combine_rewards, combined_reward_fn, load_rm_data,
                                      load_trained_reward_model, make_attribute_preferences, reward_accuracy,
                                      reward_fn, score_texts, tokenize_conversations, train_reward_model,
                                      train_reward_model_scratch, weighted_sum_rewards, whiten)
from rlhf_course.sampling import Completion
from rlhf_course.training import trl_common_args


# ---------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_golden_values():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, 0.5]), torch.tensor([0.0, 0.0, -1.0, 1.5])
    loss, accuracy = bradley_terry_loss(chosen, rejected)
    expected = -sum(math.log(1 / (1 + math.exp(-d))) for d in (1.0, 0.0, 3.0, -1.0)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert accuracy.item() == pytest.approx((1 + 0.5 + 1 + 0) / 4)  # the tie counts 1/2
    # a margin asks for a larger gap: same pairs, higher loss
    loss_m, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert loss_m.item() == pytest.approx(-sum(math.log(1 / (1 + math.exp(-d))) for d in (0.0, -1.0, 2.0, -2.0)) / 4,
                                          abs=1e-6)
    # stable for huge gaps (log(sigmoid(x)) would give -inf)
    loss_big, _ = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert loss_big.item() == pytest.approx(400.0)


def _rows(n: int, margin: bool, seed: int = 0) -> datasets.Dataset:
    rows = toyworld.make_preference_pairs(n, seed=seed)
    if margin:
        for i, row in enumerate(rows):
            row["margin"] = 0.25 * (i % 4)
    return datasets.Dataset.from_list(rows)


def _trl_trainer(tiny, rows, tmp_path):
    from trl import RewardConfig, RewardTrainer

    tok = load_tokenizer(tiny)
    model = load_reward_model(tiny, tokenizer=tok, verbose=False)
    args = RewardConfig(**trl_common_args(tiny, 1, str(tmp_path), progress=False), max_length=tiny.max_length)
    trainer = RewardTrainer(model=model, args=args, train_dataset=rows, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    return trainer, tok, batch


@pytest.mark.parametrize("margin", [False, True], ids=["no-margin", "margin"])
def test_loss_equals_trl_reward_trainer(tiny, tmp_path, margin):
    rows = _rows(8, margin)
    trainer, _, batch = _trl_trainer(tiny, rows, tmp_path)
    assert ("margin" in batch) == margin
    with torch.no_grad():  # make the rewards spread out, so the pairs are not all near a gap of 0
        for name, p in trainer.model.named_parameters():
            if "score" in name and p.requires_grad:
                p.normal_(0, 1.0)
    trl_loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
    ours, _ = bradley_terry_loss(chosen, rejected, batch.get("margin"))
    assert abs(ours.item() - trl_loss.item()) < 1e-6
    # the margin really entered the loss (it would not matter if it were silently dropped)
    if margin:
        assert abs(bradley_terry_loss(chosen, rejected)[0].item() - trl_loss.item()) > 1e-3


# ---------------------------------------------------------------------------- scoring


def test_score_texts_sees_trls_tokens_and_gives_trls_logits(tiny, tmp_path):
    rows = _rows(6, margin=False, seed=1)
    trainer, tok, batch = _trl_trainer(tiny, rows, tmp_path)
    prepared = trainer.train_dataset
    assert tokenize_conversations(tok, rows["prompt"], rows["chosen"]) == prepared["chosen_ids"]
    assert tokenize_conversations(tok, rows["prompt"], rows["rejected"]) == prepared["rejected_ids"]
    assert prepared["chosen_ids"][0][-1] == tok.eos_token_id, "the score head must read the end-of-turn token"

    model = trainer.model.eval()
    with torch.no_grad():
        trl_logits = model(**batch).logits.squeeze(-1)                       # (2B,): chosen, then rejected
    ours = score_texts(model, tok, list(rows["prompt"]) * 2, list(rows["chosen"]) + list(rows["rejected"]),
                       batch_size=4)  # other batches, other padding: the scores must not depend on them
    torch.testing.assert_close(ours, trl_logits, atol=1e-5, rtol=1e-5)
    # plain prompt text + plain answer text (what PPO passes) is the same conversation
    plain = score_texts(model, tok, [toyworld.prompt_text(p) for p in rows["prompt"]],
                        [c[0]["content"] for c in rows["chosen"]])
    torch.testing.assert_close(plain, trl_logits[: len(rows)], atol=1e-5, rtol=1e-5)


def test_reward_fn_protocol_and_missing_eos_penalty(tiny, tokenizer):
    model = load_reward_model(tiny, tokenizer=tokenizer, verbose=False)
    prompts = ["how do i cook rice ?", "how do i cook rice ?"]
    done, cut = Completion("rinse the rice first .", True, 6), Completion("rinse the rice first .", False, 6)
    rewards = reward_fn(model, tokenizer)(prompts, [done, cut])
    assert isinstance(rewards, list) and all(isinstance(r, float) for r in rewards)
    assert rewards[0] == pytest.approx(rewards[1], abs=1e-6)  # the same tokens once rendered
    penalised = reward_fn(model, tokenizer, missing_eos_penalty=1.0)(prompts, [done, cut])
    assert penalised[0] == pytest.approx(rewards[0], abs=1e-6)
    assert penalised[1] == pytest.approx(rewards[1] - 1.0, abs=1e-6)


class _ConstantRM(torch.nn.Module):
    """A reward model that gives every answer the same reward: every pair is a tie."""

    device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return type("Out", (), {"logits": torch.zeros(input_ids.shape[0], 1)})()


def test_reward_accuracy_counts_ties_as_half(tokenizer):
    assert reward_accuracy(_ConstantRM(), tokenizer, _rows(10, margin=False)) == pytest.approx(0.5)


# ---------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def short_run(tiny, tmp_path_factory):
    """One short TRL run and one from-scratch run on the same data and steps."""
    # 60 steps: past the first fast rise, so two runs that see the pairs in different orders agree
    # within a few points (on 1000 held-out pairs); ~15 s each on one busy core
    train, test = load_rm_data("train").select(range(2000)), load_rm_data("test")
    out_dir = tmp_path_factory.mktemp("rm")
    trl_run = train_reward_model(tiny, train, test, steps=60, out_dir=str(out_dir), progress=False)
    scratch_run = train_reward_model_scratch(tiny, train, test, steps=60, progress=False)
    return trl_run, scratch_run, out_dir, test


def test_trl_training_raises_held_out_accuracy(short_run, tiny):
    run, _, out_dir, test = short_run
    m = run.metrics
    assert m["accuracy"] > 0.7, m  # an untrained head is at chance (0.5)
    assert m["bayes_accuracy"] == pytest.approx(toyworld.bayes_accuracy(test["p_chosen"]))
    assert m["gap_to_bayes"] == pytest.approx(m["bayes_accuracy"] - m["accuracy"])
    assert math.isfinite(m["train_loss"]) and run.history and "accuracy" in run.history[-1]
    assert run.history[-1]["loss"] < run.history[0]["loss"]
    # the saved adapter + score head load back onto the base and score alike
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in out_dir.iterdir()}
    tok = load_tokenizer(tiny)
    reloaded = load_trained_reward_model(tiny, out_dir, verbose=False)
    prompts, answers = test["prompt"][:8], test["chosen"][:8]
    torch.testing.assert_close(score_texts(reloaded, tok, prompts, answers),
                               score_texts(run.model, tok, prompts, answers), atol=1e-5, rtol=1e-5)


def test_scratch_loop_matches_trl_path(short_run):
    trl_run, scratch_run, _, _ = short_run
    assert scratch_run.metrics["accuracy"] > 0.7, scratch_run.metrics
    assert abs(scratch_run.metrics["accuracy"] - trl_run.metrics["accuracy"]) < 0.05, \
        (scratch_run.metrics, trl_run.metrics)
    assert len(scratch_run.history) == 60
    first, last = scratch_run.history[:5], scratch_run.history[-5:]
    assert sum(h["loss"] for h in last) < sum(h["loss"] for h in first)


def test_4bit_reward_model_trains_on_cpu(tiny):
    train, test = load_rm_data("train").select(range(64)), load_rm_data("test").select(range(16))
    run = train_reward_model(tiny, train, test, steps=3, load_in_4bit=True, progress=False)
    assert math.isfinite(run.metrics["train_loss"])
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in run.model.modules())
    head = run.model.base_model.model.score  # peft's ModulesToSaveWrapper: a frozen original and the trained copy
    trained, original = head.modules_to_save["default"].weight, head.original_module.weight
    assert trained.dtype == torch.float32 and trained.requires_grad
    assert not torch.equal(trained, original), "the score head did not change"


# ---------------------------------------------------------------------------- two reward models


def test_make_attribute_preferences_labels_one_attribute():
    data = make_attribute_preferences("harmless", 200, seed=0)
    labeller = toyworld.Labeller(attribute="harmless")
    for row in data.select(range(20)):
        prompt = toyworld.parse_prompt(row["prompt"][0]["content"])
        p = labeller.prob_prefers(prompt, row["chosen"][0]["content"], row["rejected"][0]["content"])
        assert row["p_chosen"] == pytest.approx(p, abs=1e-6)
    helpful = make_attribute_preferences("helpful", 200, seed=0)
    # harmlessness ties on most benign pairs (coin-flip labels), helpfulness rarely does
    assert toyworld.bayes_accuracy(data["p_chosen"]) < toyworld.bayes_accuracy(helpful["p_chosen"])


def _gt_logits(prompt: toyworld.Prompt, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What perfect helpful / harmless reward models would output: utility / labeller temperature."""
    scores = [toyworld.score(prompt, a) for a in answers]
    return (torch.tensor([s.helpful for s in scores]) / 0.1, torch.tensor([s.harmless for s in scores]) / 0.1)


def test_combined_reward_prefers_refusals_on_harmful_and_tips_on_benign_prompts():
    j = toyworld.join_sentences
    harmful = toyworld.Prompt("how do i steal a bike ?", "steal a bike", harmful=True)
    benign = toyworld.Prompt("how do i cook rice ?", "cook rice")
    cases = [  # (prompt, answer, kind)
        (harmful, j(["sorry , i can not help with that"]), "refusal"),
        (harmful, j(toyworld.HARMFUL_TIPS["steal a bike"]), "comply"),
        (harmful, j(["cut the bike lock at night", "good luck"]), "comply"),
        (benign, j(toyworld.TIPS["cook rice"][:1]), "a tip"),
        (benign, j(["sorry , i can not help with that"]), "refusal"),
        (benign, j(list(toyworld.TIPS["cook rice"]) + ["figure it out yourself"]), "rude tips"),
    ]
    helpful, harmless = map(torch.cat, zip(*(_gt_logits(p, [a]) for p, a, _ in cases)))
    unsafe = torch.tensor([p.harmful for p, _, _ in cases])
    r = combine_rewards(helpful, harmless, unsafe=unsafe)
    assert r.mean().abs().item() < 1e-5 and r.std().item() == pytest.approx(1.0, abs=1e-5)  # whitened
    assert r[0] > r[1] and r[0] > r[2], "on a harmful prompt the refusal must win"
    assert r[3] > r[4], "on a benign prompt the tips must beat a refusal"
    # the rude answer has more tips, but the safety model flags it (sigmoid(R_s) < 0.15): safety decides
    assert helpful[5] > helpful[3] and r[3] > r[5]
    # the weighted sum lets the five tips buy back the rude remark: the trade-off Llama 2's rule refuses
    w = weighted_sum_rewards(helpful, harmless, helpful_weight=0.5, whiten_rewards=False)
    assert w[5] > w[3]
    # without the prompt flag, a mild compliance (one harmful tip) is still caught by the threshold
    raw = combine_rewards(helpful, harmless, whiten_rewards=False)
    assert torch.equal(raw, torch.where(torch.sigmoid(harmless) < 0.15, harmless, helpful))
    assert raw[2] == harmless[2]


def test_combined_reward_fn_flags_the_toy_worlds_harmful_prompts(tiny, tokenizer):
    torch.manual_seed(0)
    helpful, harmless = (load_reward_model(tiny, lora=False, tokenizer=tokenizer, verbose=False) for _ in range(2))
    prompts = ["how do i steal a bike ?", "how do i cook rice ?", "how do i cook rice ?"]
    answers = ["sorry , i can not help with that .", "rinse the rice first .", "good luck ."]
    # a threshold of 0 never triggers: the harmful prompt gets the safety score, the others the helpful one
    rewards = combined_reward_fn(helpful, harmless, tokenizer, safety_threshold=0.0)(prompts, answers)
    h, s = score_texts(helpful, tokenizer, prompts, answers), score_texts(harmless, tokenizer, prompts, answers)
    assert not torch.allclose(h, s), "two different (randomly initialised) heads"
    expected = whiten(torch.stack([s[0], h[1], h[2]]))
    torch.testing.assert_close(torch.tensor(rewards), expected, atol=1e-5, rtol=1e-5)


def test_whiten():
    x = torch.tensor([1.0, 2.0, 3.0, 10.0])
    w = whiten(x)
    assert w.mean().abs().item() < 1e-6 and w.std().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(w.argsort(), x.argsort())
