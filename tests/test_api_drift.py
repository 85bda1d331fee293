"""The API-drift guard: the trl / transformers / peft / bitsandbytes / accelerate calls that the package
and the solution notebooks make, with the parameter names they pass, against the installed libraries.

An upgrade that renames or removes a parameter fails here, in one place, naming the library, the call
and the parameter - instead of a notebook failing (or, for a **kwargs function, silently ignoring the
argument) in week 6. RECORDED is the record; `test_the_record_covers_every_call` keeps it complete by
reading the code, so a new call or argument must be added here before it can be used.
"""

import ast
import dataclasses
import importlib
import inspect
import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# callable -> the parameter names we pass (an empty list: we only need the callable to exist)
RECORDED = {
    # trl: trainers and their configs (plus every field of training.trl_common_args, checked separately)
    "trl.SFTConfig": ["completion_only_loss", "learning_rate", "lr_scheduler_type", "max_length", "warmup_steps"],
    "trl.SFTTrainer": ["args", "model", "peft_config", "processing_class", "train_dataset"],
    "trl.DPOConfig": ["beta", "learning_rate", "loss_type", "lr_scheduler_type", "max_length", "warmup_steps"],
    "trl.DPOTrainer": ["args", "model", "peft_config", "processing_class", "train_dataset"],
    "trl.RewardConfig": ["center_rewards_coefficient", "learning_rate", "lr_scheduler_type", "max_grad_norm",
                         "max_length", "warmup_steps"],
    "trl.RewardTrainer": ["args", "model", "processing_class", "train_dataset"],
    "trl.GRPOConfig": ["beta", "disable_dropout", "learning_rate", "logging_steps", "max_completion_length",
                       "num_generations", "temperature", "top_k", "top_p"],
    "trl.GRPOTrainer": ["args", "callbacks", "model", "peft_config", "processing_class", "reward_funcs", "train_dataset"],
    "trl.RLOOConfig": ["beta", "disable_dropout", "learning_rate", "logging_steps", "max_completion_length",
                       "num_generations", "temperature", "top_k", "top_p"],
    "trl.RLOOTrainer": ["args", "callbacks", "model", "peft_config", "processing_class", "reward_funcs", "train_dataset"],
    "trl.trainer.reward_trainer.suppress_seqcls_warning": [],
    # transformers
    "transformers.PreTrainedModel.from_pretrained": ["device_map", "dtype", "num_labels", "quantization_config",
                                                      "token", "trust_remote_code", "use_safetensors"],
    "transformers.AutoTokenizer.from_pretrained": ["token", "trust_remote_code"],
    "transformers.BitsAndBytesConfig": ["bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
                                        "llm_int8_skip_modules", "load_in_4bit"],
    "transformers.PreTrainedModel.save_pretrained": ["safe_serialization"],
    "transformers.PreTrainedTokenizerBase.apply_chat_template": ["add_generation_prompt", "return_dict", "tokenize"],
    "transformers.GenerationMixin.generate": ["do_sample", "eos_token_id", "max_new_tokens", "pad_token_id",
                                              "temperature", "top_k", "top_p"],
    "transformers.LlamaConfig": ["bos_token_id", "eos_token_id", "hidden_size", "intermediate_size",
                                 "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
                                 "num_key_value_heads", "pad_token_id", "tie_word_embeddings", "vocab_size"],
    "transformers.get_scheduler": ["num_training_steps", "num_warmup_steps"],
    "transformers.Trainer.train": ["resume_from_checkpoint"],
    "transformers.Trainer.remove_callback": [],
    "transformers.Trainer.save_model": [],
    "transformers.Trainer._save_checkpoint": [],   # tests/test_resume.py stops a run right after a save
    "transformers.PrinterCallback": [],
    # peft
    "peft.LoraConfig": ["bias", "lora_alpha", "lora_dropout", "modules_to_save", "r", "target_modules", "task_type",
                        "use_rslora"],
    "peft.get_peft_model": [],
    "peft.prepare_model_for_kbit_training": ["use_gradient_checkpointing"],
    "peft.set_peft_model_state_dict": ["adapter_name"],
    "peft.PeftModel.from_pretrained": ["is_trainable"],
    "peft.PeftConfig.from_pretrained": [],
    "peft.PeftModel.save_pretrained": ["safe_serialization", "selected_adapters"],
    "peft.PeftModel.add_adapter": [],
    "peft.PeftModel.set_adapter": [],
    "peft.PeftModel.disable_adapter": [],
    "peft.PeftModel.get_base_model": [],
    "peft.tuners.lora.LoraModel.merge_and_unload": [],
    "peft.tuners.lora.LoraModel.disable_adapter_layers": [],   # loading.reference_policy switches the layers itself
    "peft.tuners.lora.LoraModel.enable_adapter_layers": [],
    # bitsandbytes (the memory planner reads how it stores 4-bit weights)
    "bitsandbytes.nn.Linear4bit": [],
    "bitsandbytes.functional.QuantState": [],

    # accelerate
    "accelerate.Accelerator": ["cpu", "mixed_precision"],
    "accelerate.Accelerator.reduce": ["reduction"],
    "accelerate.PartialState": [],
}

# transformers 5 ignores it (always safetensors): harmless, but drop it where still passed
KNOWN_STALE = {("transformers.PreTrainedModel.save_pretrained", "safe_serialization")}

# How a call site in our code maps onto RECORDED: a function name, or "receiver.attribute"
# ("*" for any receiver). The scan reads rlhf_course/**/*.py and solutions/**/*.ipynb.
CALL_SITES = {
    **{n: [f"trl.{n}"] for n in ("SFTConfig", "SFTTrainer", "DPOConfig", "DPOTrainer", "RewardConfig",
                                  "RewardTrainer", "GRPOConfig", "GRPOTrainer", "RLOOConfig", "RLOOTrainer")},
    "config_cls": ["trl.GRPOConfig", "trl.RLOOConfig"],       # grpo.py picks the class by algorithm
    "trainer_cls": ["trl.GRPOTrainer", "trl.RLOOTrainer"],
    "BitsAndBytesConfig": ["transformers.BitsAndBytesConfig"],
    "LlamaConfig": ["transformers.LlamaConfig"],
    "get_scheduler": ["transformers.get_scheduler"],
    "LoraConfig": ["peft.LoraConfig"],
    "get_peft_model": ["peft.get_peft_model"],
    "prepare_model_for_kbit_training": ["peft.prepare_model_for_kbit_training"],
    "set_peft_model_state_dict": ["peft.set_peft_model_state_dict"],
    "Accelerator": ["accelerate.Accelerator"],
    "PeftModel.from_pretrained": ["peft.PeftModel.from_pretrained"],
    "PeftConfig.from_pretrained": ["peft.PeftConfig.from_pretrained"],
    "loader.from_pretrained": ["transformers.PreTrainedModel.from_pretrained", "transformers.AutoTokenizer.from_pretrained"],
    "_from_pretrained": ["transformers.PreTrainedModel.from_pretrained"],  # loading.py's wrapper passes them on
    "*.apply_chat_template": ["transformers.PreTrainedTokenizerBase.apply_chat_template"],
    "model.generate": ["transformers.GenerationMixin.generate"],
    "*.add_adapter": ["peft.PeftModel.add_adapter"],
    "*.set_adapter": ["peft.PeftModel.set_adapter"],
    "*.merge_and_unload": ["peft.tuners.lora.LoraModel.merge_and_unload"],
    "*.disable_adapter_layers": ["peft.tuners.lora.LoraModel.disable_adapter_layers"],
    "*.enable_adapter_layers": ["peft.tuners.lora.LoraModel.enable_adapter_layers"],
    "trainer.train": ["transformers.Trainer.train"],
    "*.reduce": ["accelerate.Accelerator.reduce"],
    "*.save_pretrained": ["transformers.PreTrainedModel.save_pretrained"],  # peft's when it names adapters
}


def resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def accepted_names(obj) -> set[str] | None:
    """Parameter names `obj` takes: its signature (and dataclass fields), and for a **kwargs function
    the names its source reads out of kwargs (e.g. transformers' from_pretrained pops "dtype"). None
    when that source cannot be read (then only the callable's existence is checked)."""
    names = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(target).parameters
    names |= {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        try:
            source = inspect.getsource(target)
        except (OSError, TypeError):
            return None
        names |= set(re.findall(r'kwargs\.(?:pop|get)\(\s*["\'](\w+)["\']', source))
    return names


def library_of(dotted: str) -> str:
    lib = dotted.split(".")[0]
    return f"{lib} {metadata.version(lib)}"


def test_recorded_calls_exist_with_the_parameters_we_pass():
    problems = []
    for dotted, names in RECORDED.items():
        try:
            obj = resolve(dotted)
        except (ImportError, AttributeError):
            problems.append(f"{library_of(dotted)}: `{dotted}` no longer exists")
            continue
        if dotted == "transformers.PreTrainedModel.from_pretrained":  # other names set the model's config
            from transformers import PretrainedConfig
            config = PretrainedConfig()
            accepted = accepted_names(obj) | {n for n in names if hasattr(config, n)}
        elif dotted == "transformers.GenerationMixin.generate":        # generate(**kwargs) updates a GenerationConfig
            from transformers import GenerationConfig
            accepted = set(GenerationConfig().to_dict())
        else:
            accepted = accepted_names(obj)
        if accepted is None:
            continue
        for name in names:
            if name not in accepted and (dotted, name) not in KNOWN_STALE:
                problems.append(f"{library_of(dotted)}: `{dotted}` has no parameter `{name}` (renamed or removed?)")
    assert not problems, "API drift - the installed libraries differ from what rlhf-course calls:\n  " + "\n  ".join(problems)


def test_trl_common_args_are_fields_of_every_trl_config(tmp_path):
    from trl import DPOConfig, GRPOConfig, RewardConfig, RLOOConfig, SFTConfig

    from rlhf_course.profiles import Hardware, pick_profile, profile_7b
    from rlhf_course.training import trl_common_args

    for profile in (pick_profile("tiny", Hardware("cpu")), profile_7b(Hardware("cuda", "T4", 14.7), "test")):
        keys = set(trl_common_args(profile, 10, None, False, checkpoint_dir=tmp_path, save_every=2))
        for config in (SFTConfig, DPOConfig, RewardConfig, GRPOConfig, RLOOConfig):
            missing = keys - {f.name for f in dataclasses.fields(config)}
            assert not missing, f"{library_of('trl')}: trl.{config.__name__} has no field(s) {sorted(missing)} (training.trl_common_args)"


def test_bitsandbytes_quant_state_has_the_fields_the_planner_counts():
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
    layer = layer.to("cpu")  # quantizes
    qs = layer.weight.quant_state
    assert qs is not None and qs.nested and qs.blocksize == 64 and qs.state2.blocksize == 256, \
        f"{library_of('bitsandbytes')}: NF4 double quantisation no longer stores absmax per 64 / 256 blocks"
    for name in ("absmax", "blocksize", "code", "nested", "offset", "quant_type", "state2"):
        assert hasattr(qs, name), f"{library_of('bitsandbytes')}: QuantState has no `{name}`"


# --- keeping RECORDED complete --------------------------------------------------------------------

def code_sources():
    for path in sorted((ROOT / "rlhf_course").rglob("*.py")):
        yield path, path.read_text()
    for path in sorted(ROOT.glob("solutions/**/*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield path, "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines())


def call_key(call: ast.Call) -> list[str]:
    fn = call.func
    if isinstance(fn, ast.Name):
        return [fn.id]
    if isinstance(fn, ast.Attribute):
        receiver = fn.value.id if isinstance(fn.value, ast.Name) else None
        return [f"{receiver}.{fn.attr}", f"*.{fn.attr}"] if receiver else [f"*.{fn.attr}"]
    return []


def keyword_names(call: ast.Call) -> set[str]:
    names = {k.arg for k in call.keywords if k.arg}
    for k in call.keywords:  # f(**{"a": 1, ...}): the literal's keys count too
        if k.arg is None and isinstance(k.value, ast.Dict):
            names |= {key.value for key in k.value.keys if isinstance(key, ast.Constant)}
    return names


def test_the_record_covers_every_call():
    unrecorded = []
    for path, source in code_sources():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call):
                continue
            key = next((k for k in call_key(node) if k in CALL_SITES), None)
            if key is None:
                continue
            targets = CALL_SITES[key]
            if key == "*.save_pretrained" and "selected_adapters" in keyword_names(node):
                targets = ["peft.PeftModel.save_pretrained"]
            for dotted in targets:
                for name in sorted(keyword_names(node) - set(RECORDED[dotted])):
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    unrecorded.append(f"{where} passes `{name}` to `{dotted}`: add it to RECORDED in {Path(__file__).name}")
    assert not unrecorded, "calls the drift record does not know:\n  " + "\n  ".join(unrecorded)


def test_the_guard_catches_a_renamed_parameter(monkeypatch):
    """The guard itself: pretend trl renamed DPOConfig's `beta`."""
    import trl

    fields = [f for f in dataclasses.fields(trl.DPOConfig) if f.name != "beta"]
    renamed = dataclasses.make_dataclass("DPOConfig", [(f.name, f.type, f) for f in fields] + [("kl_beta", float, 0.1)])
    monkeypatch.setattr(trl, "DPOConfig", renamed)
    with pytest.raises(AssertionError, match=r"trl \S+: `trl.DPOConfig` has no parameter `beta`"):
        test_recorded_calls_exist_with_the_parameters_we_pass()
