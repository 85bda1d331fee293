"""Build the course's tiny model: a byte-level BPE tokenizer with a chat template, and a small
Llama-architecture base model pre-trained on the toy world.

The result is shipped in `data/tiny/` (safetensors, a few MB), so nobody has to run this; it is
here so the model is not a black box. Rebuild it with `rlhf-course build-tiny` (about a minute on
two cores). The same seed, torch version and thread count give the same weights.

The model is a *base* model: it was pre-trained on the world's mixed bag of answers (the "base"
writing style - some good tips, some filler, some rudeness), so its samples already look like the
domain, and supervised fine-tuning on better demonstrations has something to improve.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf_course import toyworld

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# A minimal chat template in the style of ChatML/Zephyr: <|user|>...<|end|><|assistant|>...<|end|>
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class TinyConfig:
    """Everything that decides the tiny model. Defaults are the shipped model's."""

    # architecture: a Llama with the same module names as Mistral-7B (q/k/v/o/gate/up/down_proj)
    hidden_size: int = 128                # a multiple of 64: bitsandbytes 4-bit blocks on CPU need it
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2          # grouped-query attention, as in Mistral-7B
    max_position_embeddings: int = 128    # prompt (<= 24 tokens) + answer (<= 64 tokens) fits
    # pre-training
    n_conversations: int = 30_000
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (as in GPT-2 and Llama-3) trained on the world's text until every word is one
    token. Byte-level means any input can be encoded, even words the world never uses."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space: each word is "Ġword" wherever it stands, so the first word of an answer
    # is the same token as that word anywhere else.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, min_frequency=1, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>", padding_side="left",
        model_max_length=TinyConfig.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _batches(encoded: list[list[int]], batch_size: int, pad_id: int, rng: random.Random):
    """Endless shuffled batches of right-padded token ids with a loss mask on the padding."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            order += rng.sample(range(len(encoded)), len(encoded))
        idx, order = order[:batch_size], order[batch_size:]
        rows = [encoded[i] for i in idx]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
        labels = ids.masked_fill(ids == pad_id, -100)  # no loss on padding
        yield ids, (ids != pad_id).long(), labels


def pretrain(cfg: TinyConfig = TinyConfig(), progress: bool = True):
    """Build the tokenizer and pre-train the base model. Returns (model, tokenizer, losses)."""
    torch.manual_seed(cfg.seed)
    conversations = toyworld.make_pretraining_text(cfg.n_conversations, seed=cfg.seed)
    tokenizer = build_tokenizer([m["content"] for c in conversations for m in c])
    encoded = [tokenizer.apply_chat_template(c, tokenize=True)["input_ids"] for c in conversations]

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    # linear warm-up, then cosine decay to 10% (nanoGPT's schedule)
    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    losses = []
    batches = _batches(encoded, cfg.batch_size, tokenizer.pad_token_id, random.Random(cfg.seed))
    model.train()
    bar = tqdm(range(cfg.steps), desc="pre-training the tiny model", disable=not progress)
    for step in bar:
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model, tokenizer, losses


def build(out_dir: str | Path, cfg: TinyConfig = TinyConfig(), progress: bool = True) -> Path:
    """Pre-train and save model + tokenizer to `out_dir` as a standard Hugging Face folder."""
    out = Path(out_dir)
    t0 = time.time()
    model, tokenizer, losses = pretrain(cfg, progress)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {out}: {n_params:,} parameters, final loss {sum(losses[-50:]) / 50:.3f}, "
          f"{time.time() - t0:.0f}s")
    return out
