"""Will a 7B run fit this GPU? Peak GPU memory of the 7b profile, added up term by term.

    rlhf-course memory --model mistral-7b --method dpo --gpu t4
    plan("mistral-7b", "ppo", "t4").table()

The 7b profile loads the base in 4-bit NF4 with double quantisation, trains LoRA adapters with
gradient checkpointing, and computes in fp16 (T4) or bf16 (L4, A100). Its peak is the sum of:

  static (alive the whole run)
    1. 4-bit weights: half a byte per weight of every linear layer in the blocks, plus bitsandbytes'
       quantisation constants (an 8-bit absmax per 64 weights, an fp32 absmax per 256 of those, ...);
    2. the weights that stay unquantized (embeddings, lm_head or score head, norms, biases) in fp32:
       peft's `prepare_model_for_kbit_training` upcasts every fp16/bf16 parameter to fp32;
    3. the trained parameters (LoRA, value head, score head), their gradients and AdamW's two
       moments, in the dtype they train in (fp32; bf16 where TRL casts QLoRA adapters on a bf16 GPU);
    4. PPO only: the reward model as a second, frozen LoRA adapter with its score head;
  the step (the largest of the phases below)
    5. activations with gradient checkpointing: every layer's input (fp32: the upcast embeddings
       keep the residual stream in fp32), plus one layer recomputed in the backward pass with
       everything it saves (LoRA inputs, dropout masks, attention, MLP), plus the gradients flowing
       through it and one dequantised weight;
    6. the output head: TRL's fused log-prob head (SFT, DPO) works in tiles; the reward model reads
       one score per token; our PPO computes full logits, their log-softmax and entropy;
    7. PPO's rollout: the generation KV cache, then scoring forwards without gradients;
  and 8. the CUDA context (a constant, ~0.5 GiB: outside PyTorch's allocator).

Items 1-3 are exact byte counts (tests compare them with real models on the meta device and with
the tiny model in 4-bit); 5 is exact per layer against PyTorch's saved-tensor hooks on CPU, for the
7b profile's dtypes (autocast or fp32, LoRA dropout on); the transients in 5-7 are approximations,
stated where they are made. Sequences are counted at the full `max_length` (an upper bound: real
batches are padded to their longest pair). Without a GPU here, the ratio estimate/measured peak is
not recorded: `rlhf-course gpu-check` measures them on any CUDA GPU (see docs/reliability.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_course.errors import PlanError
from rlhf_course.profiles import LORA_TARGETS

GIB = 2**30
CUDA_CONTEXT_BYTES = int(0.5 * GIB)   # CUDA context + cuBLAS workspace: outside torch's allocator; a constant
HEADROOM_BYTES = int(1.0 * GIB)       # allocator fragmentation: "fits" leaves this much free
BLOCKSIZE, NESTED_BLOCKSIZE = 64, 256  # bitsandbytes' 4-bit blocks and its double-quantisation blocks
FUSED_TOKEN_CHUNK, FUSED_VOCAB_CHUNK = 4096, 32768  # TRL's fused log-prob head tiles (trl/kernels/chunked_logprob.py)
FP32 = 4
METHODS = ("sft", "rm", "dpo", "ppo")


# --- 1. architectures ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """The numbers of a Llama-family decoder (Llama, Mistral, Qwen2) that decide its memory."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int = 0                # 0: hidden_size // num_attention_heads
    tie_word_embeddings: bool = False
    qkv_bias: bool = False           # Qwen2 has biases on q/k/v
    o_bias: bool = False             # Llama's attention_bias puts one on o_proj too
    mlp_bias: bool = False

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_config(cls, config: dict | str | Path, name: str | None = None) -> "Architecture":
        """From a config.json (a dict, the file, or its folder): Llama, Mistral or Qwen2."""
        if not isinstance(config, dict):
            path = Path(config)
            path = path / "config.json" if path.is_dir() else path
            config, name = json.loads(path.read_text()), name or str(path.parent)
        kind = config.get("model_type", "llama")
        if kind not in ("llama", "mistral", "qwen2"):
            raise PlanError(f"memory plans know Llama, Mistral and Qwen2 decoders, not model_type {kind!r}")
        heads = config["num_attention_heads"]
        return cls(
            name=name or config.get("_name_or_path") or kind, hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=config.get("num_key_value_heads") or heads,
            vocab_size=config["vocab_size"], head_dim=config.get("head_dim") or 0,
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            qkv_bias=kind == "qwen2" or config.get("attention_bias", False),
            o_bias=kind != "qwen2" and config.get("attention_bias", False), mlp_bias=config.get("mlp_bias", False),
        )

    def linears(self) -> dict[str, tuple[int, int, bool]]:
        """Each block's linear layers: name -> (in_features, out_features, has_bias)."""
        H, I = self.hidden_size, self.intermediate_size
        return {"q_proj": (H, self.q_dim, self.qkv_bias), "k_proj": (H, self.kv_dim, self.qkv_bias),
                "v_proj": (H, self.kv_dim, self.qkv_bias), "o_proj": (self.q_dim, H, self.o_bias),
                "gate_proj": (H, I, self.mlp_bias), "up_proj": (H, I, self.mlp_bias), "down_proj": (I, H, self.mlp_bias)}


_MISTRAL = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=32000)
# Published config.json numbers of the course's 7B candidates: no download needed.
KNOWN_ARCHITECTURES = {
    "mistral-7b": Architecture("mistralai/Mistral-7B-v0.1", **_MISTRAL),
    "zephyr-7b": Architecture("HuggingFaceH4/zephyr-7b-beta", **_MISTRAL),
    "openhermes-2.5": Architecture("teknium/OpenHermes-2.5-Mistral-7B", **{**_MISTRAL, "vocab_size": 32002}),
    "qwen2.5-7b": Architecture("Qwen/Qwen2.5-7B-Instruct", hidden_size=3584, intermediate_size=18944,
                               num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                               vocab_size=152064, qkv_bias=True),
    "llama-2-7b": Architecture("meta-llama/Llama-2-7b-hf", hidden_size=4096, intermediate_size=11008,
                               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
}


def architecture(model: str | Path | Architecture) -> Architecture:
    """A known short name ("mistral-7b") or Hub id ("HuggingFaceH4/zephyr-7b-beta"), "tiny", or a
    local config.json / model folder."""
    if isinstance(model, Architecture):
        return model
    key = str(model).strip()
    for short, arch in KNOWN_ARCHITECTURES.items():
        if key.lower() in (short, arch.name.lower()):
            return arch
    if key == "tiny":
        from rlhf_course.paths import data_path
        return Architecture.from_config(data_path("tiny"), name="tiny")
    if Path(key).exists():
        return Architecture.from_config(key)
    raise PlanError(f"unknown model {key!r}: use one of {', '.join(KNOWN_ARCHITECTURES)}, 'tiny', "
                     "or the path of a config.json (nothing is downloaded)")


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float   # total memory as torch.cuda reports it (approximate)
    bf16: bool


GPUS = {"t4": GPU("Tesla T4 (Colab free)", 14.7, False), "l4": GPU("NVIDIA L4", 22.0, True),
        "a100": GPU("A100 40GB", 39.4, True), "a100-80": GPU("A100 80GB", 79.1, True)}


# --- 2. parameters: exact counts and bytes ------------------------------------------------------

def parameter_count(arch: Architecture, head: str = "causal_lm") -> int:
    """Parameters of the model as transformers builds it (head: "causal_lm" or "seq_cls" with one label)."""
    H, V = arch.hidden_size, arch.vocab_size
    per_layer = sum(i * o + (o if b else 0) for i, o, b in arch.linears().values()) + 2 * H  # + 2 RMSNorms
    n = V * H + arch.num_hidden_layers * per_layer + H                                       # + final norm
    if head == "seq_cls":
        return n + H                                                                         # score: H -> 1, no bias
    return n + (0 if arch.tie_word_embeddings else V * H)


def quantized_bytes(numel: int) -> int:
    """What bitsandbytes stores for one NF4 weight with double quantisation (as in `Linear4bit`):
    packed 4-bit values, an 8-bit absmax per 64-block, an fp32 absmax per 256 of those, an fp32
    offset, the 16-value NF4 code and the 256-value code of the 8-bit absmax (fp32)."""
    blocks = math.ceil(numel / BLOCKSIZE)
    return (numel + 1) // 2 + blocks + FP32 * math.ceil(blocks / NESTED_BLOCKSIZE) + FP32 + 16 * FP32 + 256 * FP32


def base_model_bytes(arch: Architecture, head: str = "causal_lm") -> dict[str, int]:
    """The frozen 4-bit base: quantized linear weights (with their constants) and the fp32 rest."""
    L = arch.num_hidden_layers
    linears = arch.linears().values()
    packed = L * sum((i * o + 1) // 2 for i, o, _ in linears)
    constants = L * sum(quantized_bytes(i * o) - (i * o + 1) // 2 for i, o, _ in linears)
    quantized_params = L * sum(i * o for i, o, _ in linears)
    other = parameter_count(arch, head) - quantized_params  # embeddings, lm_head/score, norms, biases
    return {"4-bit weights": packed, "quantisation constants": constants, "unquantized weights (fp32)": FP32 * other}


def lora_parameter_count(arch: Architecture, r: int, targets=LORA_TARGETS) -> int:
    """LoRA's A (r x in) and B (out x r) on each target linear of each block."""
    return arch.num_hidden_layers * sum(r * (i + o) for name, (i, o, _) in arch.linears().items() if name in targets)


def count_lora_params(config, r: int, targets=LORA_TARGETS) -> int:
    """Trainable LoRA parameters on a Hugging Face model config (a `PretrainedConfig` or its dict), what
    peft's `get_nb_trainable_parameters` reports for LoRA of rank r on `targets` (notebook 3)."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return lora_parameter_count(Architecture.from_config(as_dict), r, targets)


def trained_bytes(n_params: int, dtype_bytes: int = FP32) -> int:
    """A trained parameter with its gradient and AdamW's exp_avg and exp_avg_sq, all in its dtype.
    (AdamW's `step` counters live on the CPU unless capturable/fused.)"""
    return n_params * dtype_bytes * 4


# --- 3. activations -----------------------------------------------------------------------------

def layer_saved_bytes(arch: Architecture, sequences: int, length: int, *, autocast_bytes: int | None,
                      lora_bytes: int, r: int, dropout: bool, targets=LORA_TARGETS, padding_mask: bool = True) -> int:
    """Bytes one decoder layer saves for its backward pass, for `sequences` x `length` tokens.

    autocast_bytes: 2 under fp16/bf16 autocast (TRL's trainers), None without autocast (our PPO).
    lora_bytes: 4 for fp32 adapters, 2 for bf16 ones. The residual stream is fp32 (the upcast
    embeddings). Checked exactly against torch's saved-tensor hooks on the tiny model (tests).
    """
    rs, c = FP32, autocast_bytes or FP32  # residual stream; matmul outputs inside autocast
    ld = lora_bytes
    H, I = arch.hidden_size, arch.intermediate_size
    per_token = 2 * (rs * H + FP32)       # two RMSNorms: their input and 1/rms
    const = 0
    # each linear's input: (features, dtype bytes, group of linears that share the same input tensor)
    attn_out = c if autocast_bytes else FP32
    inputs = {"q_proj": (H, rs, "norm1"), "k_proj": (H, rs, "norm1"), "v_proj": (H, rs, "norm1"),
              "o_proj": (arch.q_dim, attn_out, "attn"), "gate_proj": (H, rs, "norm2"), "up_proj": (H, rs, "norm2"),
              "down_proj": (I, rs, "act")}
    shared_saved = set()
    for name, (fin, fout, _) in arch.linears().items():
        if name not in targets:
            continue
        width, du, group = inputs[name]
        # peft casts the LoRA branch's input to the adapter's dtype (a new tensor if it differs)
        x_dtype, x_new = ld, du != ld
        if dropout:
            per_token += ld * width                      # dropout's mask
            x_new = True                                 # and its output is a new tensor
        if autocast_bytes and x_dtype != c:
            per_token += c * width                       # lora_A saves autocast's 16-bit copy of its input
        elif x_new:
            per_token += x_dtype * width                 # lora_A saves its own input
        elif group not in shared_saved and group != "attn":  # the attention output is saved by SDPA already
            per_token += x_dtype * width                 # one tensor, saved once for q/k/v (or gate/up)
            shared_saved.add(group)
        per_token += (c if autocast_bytes else ld) * r   # lora_B saves lora_A's output
        if autocast_bytes and ld != c:
            const += (fin * r + r * fout) * c            # autocast's cached 16-bit copies of A and B
    # attention (SDPA): q, k, v (k/v repeated to all heads when a padding mask is present), output, logsumexp
    a = c if autocast_bytes else FP32
    kv_width = arch.q_dim if padding_mask else arch.kv_dim
    per_token += a * (2 * arch.q_dim + 2 * kv_width) + FP32 * arch.num_attention_heads
    if padding_mask:
        const += sequences * length * length * a         # the (B, 1, T, T) mask, in the attention's dtype
    per_token += 3 * rs * I                              # MLP: SiLU's input and output, up_proj's output (fp32)
    return sequences * length * per_token + const


def checkpoint_bytes(arch: Architecture, tokens: int) -> int:
    """Gradient checkpointing keeps each layer's input (fp32 residual stream) until the backward pass."""
    return arch.num_hidden_layers * tokens * FP32 * arch.hidden_size


def backward_working_bytes(arch: Architecture, tokens: int) -> int:
    """Approximation: gradients flowing through the recomputed layer (its input and output, gate and
    up: fp32) and the largest 4-bit weight dequantised to 16 bits for grad-of-input."""
    largest = max(i * o for i, o, _ in arch.linears().values())
    return tokens * FP32 * (2 * arch.hidden_size + 2 * arch.intermediate_size) + 2 * largest


def kv_cache_bytes(arch: Architecture, batch: int, length: int, dtype_bytes: int = FP32) -> int:
    """Keys and values of every layer for `batch` sequences of `length` tokens. The 4-bit layers return
    their input's dtype, and the residual stream is fp32, so the cache is fp32."""
    return 2 * arch.num_hidden_layers * arch.kv_dim * length * batch * dtype_bytes


# --- 4. the plan --------------------------------------------------------------------------------

@dataclass
class MemoryPlan:
    """An estimated peak for one method on one GPU: items (name, bytes, note) and whether it fits."""

    model: str
    method: str
    gpu: GPU
    settings: dict
    items: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b, _ in self.items)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def fits(self) -> bool:
        return self.total_bytes + HEADROOM_BYTES <= self.gpu.memory_gib * GIB

    def table(self) -> str:
        s = self.settings
        lines = [f"{self.method} on {self.model}, {self.gpu.name} ({self.gpu.memory_gib:.1f} GiB): "
                 f"4-bit NF4, compute {s['compute']}, LoRA r={s['lora_r']} ({s['lora_dtype']}), "
                 f"{s['sequences']} sequences x {s['length']} tokens per step, gradient checkpointing"]
        for name, b, note in self.items:
            lines.append(f"  {b / GIB:7.2f} GiB  {name}" + (f"  ({note})" if note else ""))
        free = self.gpu.memory_gib - self.total_gib
        verdict = (f"fits, {free:.1f} GiB free" if self.fits else
                   f"does NOT fit: {-free:.1f} GiB over" if free < 0 else
                   f"too tight: {free:.1f} GiB free, less than the {HEADROOM_BYTES / GIB:.0f} GiB kept for fragmentation")
        lines.append(f"  {self.total_gib:7.2f} GiB  estimated peak: {verdict}")
        return "\n".join(lines)


def plan(model: str | Architecture = "mistral-7b", method: str = "dpo", gpu: str = "t4", profile=None) -> MemoryPlan:
    """Estimate the 7b profile's peak GPU memory for `method` ("sft", "rm", "dpo", "ppo") on `gpu`."""
    from rlhf_course.ppo import PPOConfig
    from rlhf_course.profiles import Hardware, profile_7b

    if method not in METHODS:
        raise PlanError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if gpu not in GPUS:
        raise PlanError(f"gpu must be one of {', '.join(GPUS)}, not {gpu!r}")
    arch, card = architecture(model), GPUS[gpu]
    p = profile or profile_7b(Hardware("cuda", card.name, card.memory_gib, card.bf16, 1, 2), "memory plan")
    bf16 = card.bf16
    c = 2                                                  # fp16 or bf16 autocast
    T, r, targets = p.max_length, p.lora_r, p.lora_target_modules
    dropout = p.lora_dropout > 0
    # TRL casts QLoRA adapters to bf16 (SFT; DPO keeps it on a bf16 GPU); the reward model and PPO keep fp32
    lora_bytes = 2 if (method in ("sft", "dpo") and bf16) else FP32
    head = "seq_cls" if method == "rm" else "causal_lm"
    sequences = {"sft": p.batch_size, "rm": 2 * p.batch_size, "dpo": 2 * p.batch_size,
                 "ppo": p.batch_size // PPOConfig.num_minibatches}[method]  # RM and DPO: chosen + rejected
    tokens = sequences * T
    H, V = arch.hidden_size, arch.vocab_size
    settings = dict(compute="bf16" if bf16 else "fp16", lora_r=r, lora_dtype="bf16" if lora_bytes == 2 else "fp32",
                    sequences=sequences, length=T, batch_size=p.batch_size,
                    gradient_accumulation_steps=p.gradient_accumulation_steps)
    out = MemoryPlan(arch.name, method, card, settings)
    add = lambda name, b, note="": out.items.append((name, int(b), note))  # noqa: E731

    # static
    for name, b in base_model_bytes(arch, head).items():
        add(name, b, {"4-bit weights": "NF4, 0.5 byte per weight of the blocks' linear layers",
                      "quantisation constants": "double-quantised absmax per 64 weights",
                      "unquantized weights (fp32)": "embeddings, " + ("score head" if head == "seq_cls" else "lm_head")
                      + ", norms: upcast by prepare_model_for_kbit_training"}[name])
    n_lora = lora_parameter_count(arch, r, targets)
    add("LoRA adapter + grads + AdamW", trained_bytes(n_lora, lora_bytes), f"{n_lora / 1e6:.1f}M parameters")
    if method == "rm":
        add("score head copy + grads + AdamW", trained_bytes(H), "peft modules_to_save")
    if method == "ppo":
        add("value head + grads + AdamW", trained_bytes(H + 1))
        add("reward model: 2nd LoRA adapter + score head", FP32 * (n_lora + H), "frozen, on the same 4-bit base")
    if method in ("ppo", "dpo"):  # training continues the SFT adapter; its frozen copy is pi_ref (loading.reference_policy)
        add("reference: frozen copy of the SFT adapter", FP32 * n_lora, "the SFT model is an adapter on a 4-bit base")

    # the training step
    autocast = c  # fp16 or bf16 autocast in every trainer, ours (PPO: accelerate's mixed precision) and TRL's
    step = {
        "activations: checkpoints (each layer's input)": checkpoint_bytes(arch, tokens),
        "activations: one layer recomputed": layer_saved_bytes(arch, sequences, T, autocast_bytes=autocast,
                                                               lora_bytes=lora_bytes, r=r, dropout=dropout, targets=targets),
        "backward working memory": backward_working_bytes(arch, tokens),
    }
    final_norm = tokens * (FP32 * H + FP32)
    if method in ("sft", "dpo"):    # TRL's fused head: tiles of (tokens x vocab chunk), never the full logits
        n, v = min(tokens, FUSED_TOKEN_CHUNK), min(V, FUSED_VOCAB_CHUNK)
        step["output head (TRL fused log-probs)"] = final_norm + tokens * H * (FP32 + FP32) + v * H * c + n * v * c
    elif method == "rm":
        step["output head (score per token)"] = final_norm + tokens * (FP32 * H + FP32)
    else:                           # full fp32 logits, sliced to the answer; log-softmax, entropy, gradients
        answer = sequences * p.max_new_tokens
        step["output head (logits, log-softmax, entropy)"] = final_norm + FP32 * V * (tokens + 6 * answer)
    train_step = sum(step.values())
    if method == "ppo":
        B, P = p.batch_size, p.max_new_tokens
        generation = kv_cache_bytes(arch, B, T) + FP32 * B * V * 2   # + one step's logits and probabilities
        scoring = FP32 * V * (B * T + 3 * B * P) + B * T * FP32 * (2 * H + 3 * arch.intermediate_size)
        rollout = max(generation, scoring)
        if rollout > train_step:    # report the phase that peaks
            add("rollout: KV cache (generation)" if generation >= scoring else "rollout: scoring forwards", rollout,
                f"batch {B}, no gradients")
        else:
            for name, b in step.items():
                add(name, b)
    else:
        for name, b in step.items():
            add(name, b, "upper bound: every sequence at max_length" if "checkpoints" in name else "")
    add("CUDA context", CUDA_CONTEXT_BYTES, "constant, outside PyTorch's allocator")
    return out


def plan_table(model: str = "mistral-7b", gpus=("t4", "l4", "a100"), methods=METHODS) -> str:
    """Markdown table of estimated peaks (GiB) for each GPU and method."""
    rows = ["| GPU | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for g in gpus:
        cells = []
        for m in methods:
            pl = plan(model, m, g)
            cells.append(f"{pl.total_gib:.1f}{'' if pl.fits else ' (does not fit)'}")
        rows.append(f"| {GPUS[g].name}, {GPUS[g].memory_gib:.0f} GiB | " + " | ".join(cells) + " |")
    return "\n".join(rows)
