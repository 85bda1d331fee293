"""A stand-in of the 7B for rehearsals on a CPU: every code path of the `7b` profile, in minutes.

    rlhf-course build-standin --out runs/standin
    RLHF_COURSE_PROFILE=7b RLHF_COURSE_REHEARSAL=runs/standin rlhf-course pipeline --out runs/rehearsal

The stand-in is what the 7b profile loads in Colab, shrunk where size does not change the code path:
  model/      Mistral-7B v0.1's published architecture (`mistral_7b_config`) with 2 layers and a hidden
              size of 64, random weights from a seed (about 17 MB at 32,000 tokens of vocabulary);
              the real Mistral-7B tokenizer, with Zephyr's chat template, padding with `</s>` as
              zephyr-7b-beta does (pad = eos: every mask must be built by position);
  judge/      a sequence classifier of the judge's architecture (Qwen3), shrunk the same way, reading
              the same tokenizer: the evaluation judge's code path, with meaningless scores.
The tokenizer is the real one, converted from the sentencepiece model that the PyPI package
mistral-common ships (`tokenizer.model.v1`, Mistral-7B v0.1's); the conversion needs sentencepiece
and protobuf. Nothing is downloaded and nothing is committed: tests build it from a seed.

The same config function, unshrunk, builds the full 7B with random weights for the GPU check
(scripts/gpu_check.py): memory and speed do not depend on the weights' values.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

# Zephyr-7B-beta's chat template (alignment-handbook's zephyr recipes): each turn closed by the EOS token
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# Mistral-7B v0.1's config.json, as published (mistralai/Mistral-7B-v0.1)
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, rope_theta=10000.0,
                  sliding_window=4096, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
# The rehearsal's shrink: the code path is the same, only the sizes differ
STANDIN_SIZES = dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=1, max_position_embeddings=1024)


def mistral_7b_config(**changes):
    """Mistral-7B v0.1's architecture (`transformers.MistralConfig`), with `changes` on top."""
    from transformers import MistralConfig

    return MistralConfig(**{**MISTRAL_7B, **changes})


def sentencepiece_model() -> Path:
    """Mistral-7B v0.1's sentencepiece model, as shipped by the PyPI package mistral-common."""
    try:
        import mistral_common
    except ImportError as err:
        raise ImportError("the stand-in needs the real Mistral tokenizer: pip install mistral-common sentencepiece "
                          "protobuf (the course's [test] extra has them)") from err
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mistral-common no longer ships Mistral-7B v0.1's tokenizer.model.v1")
    return path


def build_tokenizer(out_dir: str | Path):
    """The real Mistral-7B v0.1 tokenizer (32,000 tokens; `<s>` = 1, `</s>` = 2), converted to a fast
    tokenizer from mistral-common's sentencepiece model, with Zephyr's chat template and `</s>` as the
    pad token, as HuggingFaceH4/zephyr-7b-beta ships it. Saved to `out_dir`; returns the tokenizer."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(sentencepiece_model(), Path(tmp) / "tokenizer.model")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "pad_token": "</s>", "add_bos_token": True, "add_eos_token": False, "legacy": True,
            "model_max_length": 32768, "padding_side": "left"}))
        tokenizer = AutoTokenizer.from_pretrained(tmp)  # converts the sentencepiece model (sentencepiece, protobuf)
    tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _save_random(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)  # safetensors
    tokenizer.save_pretrained(folder)


def build_standin(out_dir: str | Path, seed: int = 0, **sizes) -> Path:
    """Write the stand-in (model/ and judge/, see the module's docstring) to `out_dir`; returns it.
    `sizes` override `STANDIN_SIZES` (e.g. num_hidden_layers=1)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen3Config

    out = Path(out_dir)
    tokenizer = build_tokenizer(out / "model")
    sizes = {**STANDIN_SIZES, **sizes}
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(mistral_7b_config(**sizes, pad_token_id=tokenizer.pad_token_id),
                                              dtype=torch.float32)
    _save_random(policy, tokenizer, out / "model")
    # the judge's architecture (Skywork-Reward-V2-Qwen3-0.6B is a Qwen3 sequence classifier), shrunk
    judge_config = Qwen3Config(hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
                               num_hidden_layers=sizes["num_hidden_layers"], num_attention_heads=sizes["num_attention_heads"],
                               num_key_value_heads=sizes["num_key_value_heads"], head_dim=16, vocab_size=len(tokenizer),
                               num_labels=1, pad_token_id=tokenizer.unk_token_id, tie_word_embeddings=False)
    judge = AutoModelForSequenceClassification.from_config(judge_config, dtype=torch.float32)
    _save_random(judge, tokenizer, out / "judge")
    (out / "README.md").write_text(
        "A stand-in of the 7B for rehearsals on a CPU (random weights; see rlhf_course/standin.py).\n"
        f"Built by `rlhf-course build-standin` with seed {seed} and sizes {json.dumps(sizes)}.\n")
    return out
