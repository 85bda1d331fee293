"""Loading for a profile: the tokenizer, a causal-LM policy (optionally 4-bit + LoRA), and a reward
model (sequence classification with one output). One place, so every notebook and trainer loads
the tiny model and a 7B the same way.

    tok = load_tokenizer(profile)
    policy = load_policy(profile)                  # + LoRA adapter; 4-bit if the profile says so
    policy = load_policy(profile, load_in_4bit=True)   # QLoRA on the tiny model, on a CPU
    rm = load_reward_model(profile)
"""

from __future__ import annotations

import gc
import os
import weakref
from contextlib import contextmanager

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          BitsAndBytesConfig)

from rlhf_course.errors import CourseError
from rlhf_course.profiles import TINY_MODEL, Profile

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class ModelLoadError(CourseError, RuntimeError):
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


def from_pretrained_checked(loader, model_id: str, **kwargs):
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
    """The profile's tokenizer, left-padded (generation appends on the right), with a pad token, and a
    chat template that renders the BOS token when the model expects one."""
    tok = from_pretrained_checked(AutoTokenizer, model_id or profile.model_path)
    if tok.pad_token is None:  # Mistral/Llama tokenizers ship without one. Zephyr's pads with EOS itself:
        tok.pad_token = tok.unk_token or tok.eos_token  # every mask here is built by position, never by pad id
    tok.padding_side = "left"
    _render_bos(tok)
    return tok


def _render_bos(tok) -> None:
    """Make the chat template start with BOS when the tokenizer adds one to plain text but the template
    does not write it (Zephyr's). Prompts are rendered by the template and tokenized without special
    tokens - by us and by TRL's trainers alike - so without this the 7B would never see its <s>."""
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    if not template or tok.bos_token is None or "bos_token" in template:
        return
    if tok("x").input_ids[:1] == [tok.bos_token_id]:  # the model was trained with BOS in front
        tok.chat_template = "{{ bos_token }}" + template


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


# --- one 4-bit base at a time -------------------------------------------------------------------

_live_4bit_bases: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def live_4bit_bases() -> int:
    """How many 4-bit base models this process still holds (after collecting garbage). A T4 holds one
    4-bit 7B with room for activations, not two: the 7b profile's loader refuses a second."""
    gc.collect()
    return len(_live_4bit_bases)


def free_memory() -> None:
    """Give back what deleted models held: collect garbage, then empty the CUDA cache. Call it after
    `del model` (and every other name that holds the model: a trainer's result, a reward function)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_one_base(profile: Profile) -> None:
    if profile.one_base_at_a_time and live_4bit_bases() > 0:
        raise ModelLoadError(
            "a 4-bit base model is already in memory, and the GPU holds one at a time: delete every name that "
            "holds the previous model (e.g. `del policy, result`), call `rlhf_course.loading.free_memory()`, then "
            "load again. (A reward model for PPO rides on the policy's base as a second adapter: no second base.)")


def device_map_for(profile: Profile) -> dict:
    if profile.device == "cuda":
        from accelerate import PartialState  # one GPU per process under `accelerate launch`
        return {"": PartialState().local_process_index}
    return {"": "cpu"}


_loading_lines_off = False


@contextmanager
def without_loading_lines():
    """No "loading ..." line inside (a job that already said once what it loads, e.g. the pipeline)."""
    global _loading_lines_off
    was, _loading_lines_off = _loading_lines_off, True
    try:
        yield
    finally:
        _loading_lines_off = was


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
    if verbose and not _loading_lines_off:
        print(describe_loading(profile, name, load_in_4bit, kwargs.pop("_lora_for_message")))
    else:
        kwargs.pop("_lora_for_message")
    if load_in_4bit:
        _check_one_base(profile)
        kwargs["quantization_config"] = quantization_config(profile)
    model = from_pretrained_checked(loader, model_id, dtype=_weights_dtype(profile), device_map=device_map_for(profile),
                             use_safetensors=True, **kwargs)
    if load_in_4bit:
        _live_4bit_bases.add(model)
        # fp32 layer norms and embeddings (peft's QLoRA recipe); checkpointing below, under its current name
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if profile.gradient_checkpointing:
        # non-reentrant checkpointing: inputs need no requires_grad hack, the frozen 4-bit weights get no gradient
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


# --- the SFT model as an adapter ------------------------------------------------------------------
# A LoRA adapter merges into full-precision weights (the tiny profile's SFT model is a plain folder), but
# not into 4-bit ones: on the 7b profile the SFT model *is* the base plus its adapter folder. Every loader
# here takes such a folder where it takes a model, so later stages start from SFT on both profiles.

def is_adapter(path: str | os.PathLike | None) -> bool:
    """A folder holding a LoRA adapter (adapter_config.json) rather than a whole model."""
    return path is not None and os.path.isfile(os.path.join(path, "adapter_config.json"))


def adapter_base(profile: Profile, adapter_dir: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on: the one its adapter_config.json records when
    that is reachable (a folder here, or the profile's Hub id), else the profile's model."""
    recorded = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    return recorded if recorded and (os.path.isdir(recorded) or recorded == profile.model_id) else profile.model_path


def load_policy(profile: Profile, *, lora: bool = True, load_in_4bit: bool | None = None,
                model_id: str | None = None, adapter: str | None = None, verbose: bool = True):
    """A causal LM for the profile; `load_in_4bit` overrides the profile (QLoRA on the tiny model).

    model_id: a model folder or Hub id (default: the profile's model), or an adapter folder (an SFT model
    on a 4-bit base), whose base is loaded and the adapter put on it. `lora`: a trainable adapter - a
    fresh one on a whole model, the folder's own (training continues it) on an adapter folder; without
    `lora` an adapter folder's adapter is frozen. `adapter`: a saved adapter folder to put on `model_id`."""
    if is_adapter(model_id):
        adapter, model_id = str(model_id), adapter_base(profile, model_id)
    model = _load(AutoModelForCausalLM, profile, model_id, load_in_4bit, verbose, _lora_for_message=lora)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.pad_token_id
    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=lora)
    return get_peft_model(model, lora_config(profile)) if lora else model


def policy_for_trainer(profile: Profile, model_id: str | None = None, load_in_4bit: bool | None = None,
                       verbose: bool = True) -> tuple[object, LoraConfig | None]:
    """What a TRL trainer is given: (model, peft_config). On a whole model (the merged SFT model): the
    model and a fresh LoRA config, which TRL applies; the reference is that model with the adapter off.
    On an adapter folder (SFT on a 4-bit base): the adapter, trainable, and no config - TRL continues it
    and keeps a frozen copy named "ref" as the reference (TRL's DPOTrainer and GRPOTrainer both do)."""
    if is_adapter(model_id):
        return load_policy(profile, model_id=model_id, load_in_4bit=load_in_4bit, verbose=verbose), None
    return load_policy(profile, lora=False, model_id=model_id, load_in_4bit=load_in_4bit, verbose=verbose), \
        lora_config(profile)


def load_reward_model(profile: Profile, *, lora: bool = True, load_in_4bit: bool | None = None,
                      model_id: str | None = None, tokenizer=None, verbose: bool = True):
    """A reward model: the policy's architecture with a one-output `score` head on the last token.
    The head is new (random) and always trained; with `lora` the body is adapted with LoRA. On an
    adapter folder (the SFT model on a 4-bit base) the reward model's LoRA starts from the SFT adapter's
    weights, as InstructGPT starts its reward model from the SFT model."""
    start = str(model_id) if is_adapter(model_id) else None
    base = adapter_base(profile, model_id) if start else model_id
    model = _load(AutoModelForSequenceClassification, profile, base, load_in_4bit, verbose,
                  _lora_for_message=lora, num_labels=1)
    # the head reads the last token that is not padding, so the model must know the tokenizer's pad
    model.config.pad_token_id = (tokenizer or load_tokenizer(profile, model_id)).pad_token_id
    if start and not lora:
        raise ValueError("a reward model on an SFT adapter trains LoRA: use lora=True")
    if not lora:
        return model
    model = get_peft_model(model, lora_config(profile, task_type="SEQ_CLS"))
    if start:
        _copy_lora_weights(start, model)
    return model


def _copy_lora_weights(adapter_dir: str, model) -> None:
    """Initialise `model`'s LoRA adapter with an adapter folder's LoRA weights (same targets and rank).
    A causal LM's and a sequence classifier's decoder layers have the same names (`model.layers.N...`)."""
    from safetensors.torch import load_file

    weights = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    lora = {name for name in params if ".lora_A.default." in name or ".lora_B.default." in name}
    copied = set()
    for key, value in weights.items():
        name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        if name in lora and params[name].shape == value.shape:
            params[name].data.copy_(value)
            copied.add(name)
    if copied != lora:
        raise ModelLoadError(f"{adapter_dir}: its LoRA weights do not fit this model ({len(copied)} of {len(lora)} "
                             "LoRA matrices matched): the same base, target modules and rank are needed")


# --- the reference policy --------------------------------------------------------------------------

REFERENCE_ADAPTER = "ref"  # TRL's name for the frozen copy of an adapter that training continues


@contextmanager
def active_adapter(model, name: str):
    """Switch a PEFT model to another adapter (e.g. "reward") and back. PEFT's set_adapter also flips
    requires_grad, so the previous adapter's trainability is restored on the way out."""
    previous = model.active_adapter
    was_trainable = {n: p.requires_grad for n, p in model.named_parameters() if f".{previous}." in n}
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(previous)
        for n, p in model.named_parameters():
            if n in was_trainable:
                p.requires_grad_(was_trainable[n])


def add_reference_adapter(model) -> None:
    """Keep a frozen copy of the adapter training continues (e.g. the SFT adapter) as "ref", the reference
    policy (what TRL's DPOTrainer and GRPOTrainer do when given a model that already has an adapter)."""
    model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
    model.train(model.training)  # the new adapter's modules (its dropout) take the model's mode
    for name, param in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            param.data.copy_(model.get_parameter(name.replace(f".{REFERENCE_ADAPTER}.", ".default.")).data)
            param.requires_grad_(False)


@contextmanager
def reference_policy(model):
    """Inside `with`, `model` computes as pi_ref, the policy training started from, from the same weights:
    its frozen "ref" adapter when training continues an adapter (the SFT adapter of a 4-bit base), else
    with every adapter switched off (a fresh adapter on the merged SFT model). No second copy of a model."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        with active_adapter(model, REFERENCE_ADAPTER):
            yield
    else:
        # What peft's `model.disable_adapter()` does for LoRA, less the status check of every layer it makes
        # first (it only warns when some layers are on and others off), which costs more than the switch
        # itself: 2 of 3.5 ms a call on the tiny model, paid at every PPO iteration (issue 14).
        model.base_model.disable_adapter_layers()
        try:
            yield
        finally:
            model.base_model.enable_adapter_layers()


def keep_trainable_fp32(model, profile: Profile | None = None) -> None:
    """Undo TRL's bf16 cast of the trainable weights (LoRA, heads) of a model on a quantized base.

    TRL's trainers cast them to bf16 when the base is 4-bit (the QLoRA paper's recipe). A CPU computes
    in fp32 and a T4 has no bf16 (fp16 mixed precision needs fp32 master weights), so they go back to
    fp32. With `profile`, a profile that computes in bf16 keeps TRL's bf16 adapters (SFT and DPO do
    this, which halves their optimizer state: see `gpu_memory.py`)."""
    if profile is not None and profile.compute_dtype == torch.bfloat16:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
