import pytest
import torch

from rlhf_course import toyworld
from rlhf_course.loading import ModelLoadError, describe_loading, load_policy, load_reward_model, load_tokenizer
from rlhf_course.profiles import pick_profile
from tests.test_profiles import T4


def test_tokenizer_has_chat_template_pad_and_one_token_per_word(tokenizer):
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|end|>"
    text = tokenizer.apply_chat_template(toyworld.user("how do i cook rice ?") + toyworld.assistant("good luck ."),
                                         tokenize=False)
    assert text == "<|user|>how do i cook rice ?<|end|><|assistant|>good luck .<|end|>"
    words = {w for s in toyworld.SENTENCES for w in s.split()} | {w for p in toyworld.all_prompts() for w in p.text.split()}
    for w in words:  # GPT-2's pre-tokenizer splits a possessive: "sister's" -> "Ġsister", "'s"
        assert len(tokenizer(w, add_special_tokens=False)["input_ids"]) == (2 if "'" in w else 1), w
    # byte-level: text from outside the world still encodes and decodes
    ids = tokenizer("Grüße, 42!", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids).strip() == "Grüße, 42!"


def test_prompt_is_a_prefix_of_prompt_plus_answer(tokenizer):
    # what TRL's DPO/reward trainers rely on (no token merges across the boundary)
    prompt = toyworld.user("how do i cook rice ?")
    p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    pc = tokenizer.apply_chat_template(prompt + toyworld.assistant("rinse the rice first ."))["input_ids"]
    assert pc[: len(p)] == p


def test_policy_with_lora_trains_only_the_adapter(tiny, tokenizer):
    model = load_policy(tiny, verbose=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    batch = tokenizer(["<|user|>how do i cook rice ?<|end|><|assistant|>good luck .<|end|>"], return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))


def _qlora_steps(model, batch, labels_key="input_ids", steps=5):
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        out = model(**batch, labels=batch[labels_key])
        out.loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert any(not torch.equal(b, p) for b, p in zip(before, params)), "no adapter weight changed"
    return losses


def test_4bit_policy_forward_and_qlora_backward_on_cpu(tiny, tokenizer):
    import bitsandbytes as bnb

    model = load_policy(tiny, load_in_4bit=True, verbose=False)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 == 4 * 7, "every q/k/v/o/gate/up/down_proj of the 4 blocks is 4-bit"
    w = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert w.quant_state.quant_type == "nf4" and w.quant_state.nested, "NF4 with double quantisation"
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    batch = tokenizer(["<|user|>how do i cook rice ?<|end|><|assistant|>rinse the rice first .<|end|>"] * 4,
                      return_tensors="pt")
    losses = _qlora_steps(model, batch)
    assert losses[-1] < losses[0], "QLoRA steps should lower the loss on a fixed batch"


def test_4bit_reward_model_backward(tiny, tokenizer):
    rm = load_reward_model(tiny, load_in_4bit=True, tokenizer=tokenizer, verbose=False)
    assert rm.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["<|user|>how do i cook rice ?<|end|><|assistant|>good luck .<|end|>",
                       "<|user|>any tips to bake bread ?<|end|><|assistant|>bake it in a hot oven .<|end|>"],
                      return_tensors="pt", padding=True)
    scores = rm(**batch).logits
    assert scores.shape == (2, 1)
    (scores[0] - scores[1]).sum().backward()
    head = [p for n, p in rm.named_parameters() if "score" in n and p.requires_grad]
    assert head and all(p.grad is not None for p in head), "the new score head is trained in full"


def test_loading_says_what_it_chose(tiny, capsys):
    load_policy(tiny, load_in_4bit=True)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "tiny on cpu" in line and "4-bit NF4 + double quant" in line and "compute fp32" in line
    assert "fp16" in describe_loading(pick_profile("7b", hardware=T4), "x", True, True)


def test_7b_off_line_is_a_clear_error_naming_the_fallback():
    with pytest.raises(ModelLoadError, match=r"HF_HUB_OFFLINE=1.*tiny profile needs no download"):
        load_tokenizer(pick_profile("7b", hardware=T4))
