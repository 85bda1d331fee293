"""The 7B memory planner: its byte counts against real models (meta device, tiny model in 4-bit on CPU)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, MistralConfig, Qwen2Config

from rlhf_course.cli import main
from rlhf_course.errors import PlanError
from rlhf_course.gpu_memory import (GIB, KNOWN_ARCHITECTURES, architecture, base_model_bytes, kv_cache_bytes,
                                    layer_saved_bytes, lora_parameter_count, parameter_count, plan, plan_table,
                                    trained_bytes)
from rlhf_course.profiles import LORA_TARGETS

# Published parameter counts (model cards / safetensors index): a check on the architectures' numbers
PUBLISHED = {"mistral-7b": 7_241_732_096, "qwen2.5-7b": 7_615_616_512, "llama-2-7b": 6_738_415_616}


def config_of(name):
    a = KNOWN_ARCHITECTURES[name]
    cls = Qwen2Config if name.startswith("qwen") else LlamaConfig if name.startswith("llama") else MistralConfig
    return cls(hidden_size=a.hidden_size, intermediate_size=a.intermediate_size, num_hidden_layers=a.num_hidden_layers,
               num_attention_heads=a.num_attention_heads, num_key_value_heads=a.num_key_value_heads,
               vocab_size=a.vocab_size, tie_word_embeddings=a.tie_word_embeddings, num_labels=1)


@pytest.mark.parametrize("name", ["mistral-7b", "qwen2.5-7b", "llama-2-7b"])
def test_parameter_and_lora_counts_equal_models_built_on_the_meta_device(name):
    from peft import LoraConfig, get_peft_model

    arch = KNOWN_ARCHITECTURES[name]
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config_of(name))
        rm = AutoModelForSequenceClassification.from_config(config_of(name))
    assert parameter_count(arch) == sum(p.numel() for p in lm.parameters()) == PUBLISHED[name]
    assert parameter_count(arch, "seq_cls") == sum(p.numel() for p in rm.parameters())
    peft_model = get_peft_model(lm, LoraConfig(r=16, target_modules=list(LORA_TARGETS)))
    assert lora_parameter_count(arch, 16) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_short_names_hub_ids_and_config_files_give_the_same_architecture():
    assert architecture("zephyr-7b") == architecture("HuggingFaceH4/zephyr-7b-beta")
    assert architecture("zephyr-7b").hidden_size == architecture("mistral-7b").hidden_size == 4096
    assert architecture("data/tiny/config.json").hidden_size == architecture("tiny").hidden_size == 128
    with pytest.raises(PlanError, match="unknown model 'gpt-5'.*mistral-7b"):
        architecture("gpt-5")


@pytest.fixture(scope="module")
def tiny_4bit():
    """The tiny model loaded exactly as the 7b profile loads a 7B: NF4 + double quantisation, prepared
    for k-bit training (fp32 non-quantized weights), with a LoRA adapter."""
    from rlhf_course.loading import load_policy
    from rlhf_course.profiles import Hardware, pick_profile

    profile = pick_profile("tiny", Hardware("cpu", cpu_count=1))
    return profile, load_policy(profile, load_in_4bit=True, verbose=False)


def test_4bit_weights_and_constants_are_counted_exactly_as_bitsandbytes_stores_them(tiny_4bit):
    import bitsandbytes as bnb

    _, model = tiny_4bit
    packed = constants = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            packed += module.weight.nbytes
            constants += sum(t.nbytes for t in (qs.absmax, qs.offset, qs.code, qs.state2.absmax, qs.state2.code))
    other = sum(p.nbytes for n, p in model.named_parameters() if "lora_" not in n and p.dtype != torch.uint8)
    expected = base_model_bytes(architecture("tiny"))
    assert packed == expected["4-bit weights"]
    assert constants == expected["quantisation constants"]
    assert other == expected["unquantized weights (fp32)"], "prepare_model_for_kbit_training keeps them in fp32"


def test_lora_weights_grads_and_adamw_state_are_counted_exactly(tiny_4bit):
    profile, model = tiny_4bit
    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == lora_parameter_count(architecture("tiny"), profile.lora_r)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model(input_ids=torch.randint(5, 800, (2, 8))).logits.float().mean().backward()
    optimizer.step()
    moments = sum(s[k].nbytes for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq"))
    weights_and_grads = sum(p.nbytes + p.grad.nbytes for p in params)
    assert weights_and_grads + moments == trained_bytes(sum(p.numel() for p in params))


@pytest.mark.parametrize("autocast,lora_bf16,dropout", [
    (True, False, True),    # TRL trainers on a T4 (fp16) and the reward model anywhere: fp32 adapters
    (True, True, True),     # SFT / DPO on a bf16 GPU: TRL casts the adapters to bf16
    (False, False, True),   # our PPO: no autocast, fp32 adapters
    (True, False, False), (False, False, False),  # without LoRA dropout
])
def test_one_layers_saved_activations_equal_torchs_saved_tensor_hooks(tiny_4bit, autocast, lora_bf16, dropout):
    """Every tensor a decoder layer keeps for its backward pass, recorded by torch's saved-tensor hooks
    (each storage once, weights excluded), compared with the planner's formula: exact, for the 7b
    profile's dtypes (4-bit base computing in 16 bits, fp32 residual stream, LoRA r=16) on the tiny
    architecture. bf16 autocast on the CPU stands in for the GPU's fp16/bf16 autocast."""
    from rlhf_course.loading import load_policy

    profile = tiny_4bit[0].replace(compute_dtype=torch.bfloat16, lora_dropout=0.05 if dropout else 0.0)
    model = load_policy(profile, load_in_4bit=True, verbose=False)
    if lora_bf16:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    B, T = 3, 10
    input_ids = torch.randint(5, 800, (B, T), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[0, :3] = 0  # padding, as in every training batch
    layers = model.get_base_model().model.layers
    inside, seen, saved, layer_input_dtypes = [None], set(), {}, []

    def enter(module, args, i):
        inside[0] = i
        layer_input_dtypes.append(args[0].dtype)

    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: enter(m, a, i))
        layer.register_forward_hook(lambda m, a, o: inside.__setitem__(0, None))

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            saved[inside[0]] = saved.get(inside[0], 0) + t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    assert set(layer_input_dtypes) == {torch.float32}, "the residual stream is fp32 (upcast embeddings)"
    estimate = layer_saved_bytes(architecture("tiny"), B, T, autocast_bytes=2 if autocast else None,
                                 lora_bytes=2 if lora_bf16 else 4, r=profile.lora_r, dropout=dropout)
    assert saved[2] == estimate  # a middle layer: rotary tables and the mask were first saved by layer 0


def test_kv_cache_is_counted_exactly_and_is_fp32(tiny_4bit):
    from rlhf_course.loading import load_policy

    profile = tiny_4bit[0].replace(compute_dtype=torch.bfloat16)
    model = load_policy(profile, lora=False, load_in_4bit=True, verbose=False)
    with torch.no_grad():
        cache = model(input_ids=torch.randint(5, 800, (3, 7)), use_cache=True).past_key_values
    stored = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert stored == kv_cache_bytes(architecture("tiny"), batch=3, length=7)


def test_the_7b_profile_fits_a_t4_with_the_courses_headroom():
    for method in ("sft", "rm", "dpo", "ppo"):
        p = plan("mistral-7b", method, "t4")
        assert p.fits and p.total_gib <= 13.0, p.table()  # the design's budget: <= 13 GB peak on a 15 GB T4
        names = [name for name, _, _ in p.items]
        assert names[:3] == ["4-bit weights", "quantisation constants", "unquantized weights (fp32)"]
        assert "CUDA context" in names
    ppo = plan("mistral-7b", "ppo", "t4")
    assert any("reward model" in n for n, _, _ in ppo.items) and any("value head" in n for n, _, _ in ppo.items)
    # DPO's step holds chosen + rejected: twice SFT's sequences, so more activation memory
    assert plan("mistral-7b", "dpo", "t4").total_bytes > plan("mistral-7b", "sft", "t4").total_bytes
    # Qwen2.5's 152k vocabulary in fp32 costs ~3 GiB more than Mistral's 32k
    assert plan("qwen2.5-7b", "dpo", "t4").total_bytes - plan("mistral-7b", "dpo", "t4").total_bytes > 2 * GIB
    assert "| Tesla T4" in plan_table() and plan_table().count("\n") == 4


def test_memory_command_prints_the_breakdown_in_gib(capsys):
    assert main(["memory", "--model", "zephyr-7b", "--method", "dpo", "--gpu", "t4"]) == 0
    out = capsys.readouterr().out
    for expected in ("4-bit weights", "quantisation constants", "LoRA adapter + grads + AdamW",
                     "activations: checkpoints", "CUDA context", "GiB  estimated peak: fits"):
        assert expected in out, expected
    assert main(["memory", "--model", "gpt-5"]) == 2
    assert "rlhf-course memory: error: unknown model" in capsys.readouterr().err
