"""Loading for a profile: the tokenizer, a causal-LM policy (optionally 4-bit + LoRA), and a reward
model (sequence classification with one output). One place, so every notebook and trainer loads
the tiny model and a 7B the same way.

    tok = load_tokenizer(profile)
    policy = load_policy(profile)                  # + LoRA adapter; 4-bit if the profile says so
    policy = load_policy(profile, load_in_4bit=True)   # QLoRA on the tiny model, on a CPU
    rm = load_reward_model(profile)
"""

from __future__ import annotations

import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          BitsAndBytesConfig)

from rlhf_course.profiles import TINY_MODEL, Profile

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and what to do instead."""


TOKEN_NAME = "HF_TOKEN"  # the environment variable, and the Colab secret (key icon > Secrets)


def hub_token_and_source() -> tuple[str | None, str | None]:
    """The Hugging Face Hub token and where it came from ("$HF_TOKEN" or "the Colab secret HF_TOKEN"),
    or (None, None). The token is only ever passed to `from_pretrained`: never print, log or save it,
    and never paste it into a notebook cell (notebooks get shared)."""
    token = os.environ.get(TOKEN_NAME, "").strip()
    if token:
        return token, f"${TOKEN_NAME}"
    try:
        from google.colab import userdata  # only in Colab
        token = (userdata.get(TOKEN_NAME) or "").strip()
    except Exception:  # not Colab, no such secret, or access to it not granted
        token = ""
    return (token, f"the Colab secret {TOKEN_NAME}") if token else (None, None)


def hub_token() -> str | None:
    """The Hub token from $HF_TOKEN or Colab's secrets, or None (see `hub_token_and_source`)."""
    return hub_token_and_source()[0]


def _causes(err: BaseException | None):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _hub_error(model_id: str, err: Exception) -> ModelLoadError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    text = str(err)
    kinds = [type(e) for e in _causes(err)]
    if any(issubclass(k, GatedRepoError) for k in kinds) or "gated" in text.lower() or "401" in text or "403" in text:
        _, source = hub_token_and_source()
        token = (f"the token found ({source}) has no access to it" if source else
                 f"no token was found (${TOKEN_NAME} or a Colab secret)")
        why = (f"'{model_id}' is gated on the Hugging Face Hub and {token}: accept its licence on "
               f"https://huggingface.co/{model_id}, then set {TOKEN_NAME} (in Colab: the key icon > Secrets > "
               f"{TOKEN_NAME}, with notebook access; never paste a token into a cell)")
    elif os.environ.get("HF_HUB_OFFLINE") == "1":
        why = f"'{model_id}' is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it"
    elif any(issubclass(k, RepositoryNotFoundError) for k in kinds):
        why = f"'{model_id}' is not a model on the Hugging Face Hub (check the name; a private model needs {TOKEN_NAME})"
    else:
        why = f"'{model_id}' could not be downloaded from the Hugging Face Hub (no network, or no such model)"
    return ModelLoadError(
        f"{why}. The tiny profile needs no download: its model is in the repository (data/tiny). "
        f"Use it with RLHF_COURSE_PROFILE=tiny or pick_profile('tiny').\n  ({type(err).__name__}: {text.splitlines()[0] if text else ''})"
    )


def _from_pretrained(loader, model_id: str, **kwargs):
    """`loader.from_pretrained` with safetensors only, no remote code, the Hub token from `hub_token()`
    for a Hub id, and a clear error off-line."""
    if not os.path.isdir(model_id):
        kwargs.setdefault("token", hub_token())  # None: huggingface_hub's own login, if any
    try:
        return loader.from_pretrained(model_id, trust_remote_code=False, **kwargs)
    except OSError as err:  # missing files, no network, gated repo: transformers raises OSError for all
        if os.path.isdir(model_id):
            raise ModelLoadError(f"cannot load '{model_id}': {err}") from err
        raise _hub_error(model_id, err) from err


def load_tokenizer(profile: Profile, model_id: str | None = None):
    """The profile's tokenizer, left-padded (generation appends on the right), with a pad token."""
    tok = _from_pretrained(AutoTokenizer, model_id or profile.model_path)
    if tok.pad_token is None:  # Mistral/Llama tokenizers ship without one; never pad with EOS, it gets masked
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = "left"
    return tok


def quantization_config(profile: Profile) -> BitsAndBytesConfig:
    """4-bit NormalFloat with double quantisation, computing in the profile's dtype (QLoRA, arXiv:2305.14314)."""
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=profile.compute_dtype,
        # keep the classification head of a reward model out of 4-bit: it is tiny and trained in full
        llm_int8_skip_modules=["score", "lm_head"],
    )


def lora_config(profile: Profile, task_type: str = "CAUSAL_LM") -> LoraConfig:
    """LoRA on every linear layer of the blocks (q/k/v/o/gate/up/down_proj), as in QLoRA."""
    return LoraConfig(
        r=profile.lora_r, lora_alpha=profile.lora_alpha, lora_dropout=profile.lora_dropout,
        target_modules=list(profile.lora_target_modules), task_type=task_type,
        # a reward model's new head must be trained and saved in full, next to the adapter
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def _device_map(profile: Profile) -> dict:
    if profile.device == "cuda":
        from accelerate import PartialState  # one GPU per process under `accelerate launch`
        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def describe_loading(profile: Profile, model_id: str, load_in_4bit: bool, lora: bool) -> str:
    quant = "4-bit NF4 + double quant" if load_in_4bit else DTYPE_NAMES[_weights_dtype(profile)] + " weights"
    adapter = f"LoRA r={profile.lora_r} on {'/'.join(m.replace('_proj', '') for m in profile.lora_target_modules)}_proj" if lora else "no adapter"
    return (f"loading {model_id} on {profile.device}: {quant}, compute {DTYPE_NAMES[profile.compute_dtype]}, "
            f"{adapter} [{profile.reason}]")


def _weights_dtype(profile: Profile) -> torch.dtype:
    return torch.float32 if profile.device == "cpu" else profile.compute_dtype


def _load(loader, profile: Profile, model_id: str | None, load_in_4bit: bool | None, verbose: bool, **kwargs):
    model_id = model_id or profile.model_path
    load_in_4bit = profile.load_in_4bit if load_in_4bit is None else load_in_4bit
    name = TINY_MODEL if model_id == profile.model_path and profile.model_id == TINY_MODEL else model_id
    if verbose:
        print(describe_loading(profile, name, load_in_4bit, kwargs.pop("_lora_for_message")))
    else:
        kwargs.pop("_lora_for_message")
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(profile)
    model = _from_pretrained(loader, model_id, dtype=_weights_dtype(profile), device_map=_device_map(profile),
                             use_safetensors=True, **kwargs)
    if load_in_4bit:
        # fp32 layer norms and embeddings, input grads for checkpointing (peft's QLoRA recipe)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=profile.gradient_checkpointing)
    elif profile.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_policy(profile: Profile, *, lora: bool = True, load_in_4bit: bool | None = None,
                model_id: str | None = None, adapter: str | None = None, verbose: bool = True):
    """A causal LM for the profile. With `lora`, a fresh trainable LoRA adapter (or the saved
    `adapter` folder) on a frozen base; `load_in_4bit` overrides the profile (QLoRA on the tiny model)."""
    model = _load(AutoModelForCausalLM, profile, model_id, load_in_4bit, verbose, _lora_for_message=lora)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.pad_token_id
    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=lora)
    return get_peft_model(model, lora_config(profile)) if lora else model


def load_reward_model(profile: Profile, *, lora: bool = True, load_in_4bit: bool | None = None,
                      model_id: str | None = None, tokenizer=None, verbose: bool = True):
    """A reward model: the policy's architecture with a one-output `score` head on the last token.
    The head is new (random) and always trained; with `lora` the body is adapted with LoRA."""
    model = _load(AutoModelForSequenceClassification, profile, model_id, load_in_4bit, verbose,
                  _lora_for_message=lora, num_labels=1)
    # the head reads the last token that is not padding, so the model must know the tokenizer's pad
    model.config.pad_token_id = (tokenizer or load_tokenizer(profile, model_id)).pad_token_id
    return get_peft_model(model, lora_config(profile, task_type="SEQ_CLS")) if lora else model


def keep_trainable_fp32(model, profile: Profile | None = None) -> None:
    """Undo TRL's bf16 cast of the trainable weights (LoRA, heads) of a model on a quantized base.

    TRL's trainers cast them to bf16 when the base is 4-bit (the QLoRA paper's recipe). A CPU computes
    in fp32 and a T4 has no bf16 (fp16 mixed precision needs fp32 master weights), so they go back to
    fp32. With `profile`, a profile that computes in bf16 keeps TRL's bf16 adapters (SFT and DPO do
    this, which halves their optimizer state: see `memory.py`)."""
    if profile is not None and profile.compute_dtype == torch.bfloat16:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
