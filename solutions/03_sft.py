# %% [markdown]
# # 3. Supervised fine-tuning with LoRA and QLoRA
#
# A pretrained model continues text; an assistant answers. The first step of RLHF, **supervised
# fine-tuning** (SFT), closes most of that gap by imitation: train on demonstrations of good answers.
# Here we build the loss (only the answer's tokens count), then make fine-tuning cheap with **LoRA**
# (train two small matrices per layer instead of the layer) and **QLoRA** (keep the frozen model in
# 4 bits), which is how a 7B model is fine-tuned on a free Colab T4. We train the tiny model, measure
# what SFT buys on the toy world's ground truth, and look at what it costs: overfitting and forgetting.
#
# **Learning goals**
# - state the SFT objective and build completion-only labels (-100 on the prompt and the padding);
# - derive LoRA's update $W_0 + \frac{\alpha}{r} BA$, implement its forward pass, and count its parameters for
#   the tiny model and a 7B;
# - explain QLoRA's three ideas (NF4, double quantisation, paged optimisers) and run a 4-bit model with
#   LoRA on a CPU;
# - train with `rlhf_course.sft.train_sft`, compare base and SFT models by ground-truth reward, and
#   recognise overfitting and catastrophic forgetting.
#
# **Prerequisites**: notebook 0 (the toy world, the profiles); notebook 2 (log-probabilities of an
# answer); PyTorch `nn.Linear`.
#
# **Estimated time**: 45-60 minutes to work through. The notebook runs in about two minutes on a
# laptop CPU with the tiny profile. On the `7b` profile (a T4) it trains a 7B three times (30 steps in
# section 4, 5 in section 5, the full `profile.sft_steps` in section 7): an estimated 30-60 minutes,
# not measured yet; at most one 4-bit 7B and the judge in memory at a time (the SFT plan of section 7,
# 7.6 GiB, plus 2.4 GB for the judge in fp32: about 10 GiB of the T4's 14.7, estimated).

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import warnings

import bitsandbytes.functional as bnbf
import datasets
import matplotlib.pyplot as plt
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from rlhf_course import gpu_memory, toyworld, trained_models
from rlhf_course.checks.nb03_sft import check_completion_labels, check_count_lora_params, check_lora_forward
from rlhf_course.evaluation import evaluate_policy, protocol
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import free_memory, is_adapter, load_policy, load_tokenizer, lora_config
from rlhf_course.plots import plot_reward_distributions, plot_training_curves
from rlhf_course.preference_sets import load_sft_set
from rlhf_course.sft import load_sft_data, save_sft_model, train_sft

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
warnings.filterwarnings("ignore", category=UserWarning)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
datasets.disable_progress_bars()
_ = torch.manual_seed(0)  # the seed for the cells below

# %% [markdown]
# ## 1. What SFT does, and why it comes first
#
# InstructGPT (Ouyang et al. 2022, arXiv:2203.02155) trains in three steps: (1) **SFT** on
# demonstrations written by labellers, (2) a reward model on their comparisons, (3) PPO against that
# reward model. Step 1 is plain maximum likelihood on (prompt $x$, answer $y$) pairs:
#
# $$\mathcal{L}_{\text{SFT}}(\theta) = -\,\mathbb{E}_{(x, y) \sim \mathcal{D}}\Big[\sum_{t=1}^{|y|} \log \pi_\theta(y_t \mid x, y_{<t})\Big].$$
#
# It is the same log-probability of an answer as in notebook 2, now *maximised* on answers someone
# wrote, rather than weighted by a reward on answers the model sampled. Why first? RL can only
# reinforce what the policy already samples sometimes: a model that rambles never writes a good answer
# to reinforce. SFT puts the policy in the right region; RLHF then sharpens it. The SFT model is also the
# **reference** that PPO's KL penalty and DPO's loss measure the policy against.
#
# The toy world's demonstrations give a task's tips in their natural order. The base model was
# pretrained on the domain's text (it knows the words) but never learned to answer well. (On the `7b`
# profile: the real preference set's demonstrations, `preference_sets.load_sft_set`, and a chat model
# that already answers; there is no ground truth for free text, so the profile's judge scores it.)

# %%
# NBVAL_IGNORE_OUTPUT
tokenizer = load_tokenizer(profile)
demos = (load_sft_data() if profile.has_ground_truth  # the toy world's demonstrations, else the real set's
         else load_sft_set(profile.preference_set, n=profile.preference_pairs, tokenizer=tokenizer,
                           max_length=profile.max_length))
base = load_policy(profile, lora=False)
print(f"{len(demos)} demonstrations, e.g.\n  prompt: {demos[0]['prompt'][0]['content']!r}\n"
      f"  answer: {demos[0]['completion'][0]['content']!r}")

# %%
# NBVAL_IGNORE_OUTPUT
gold = gold_reward_fn(profile)        # the toy world's ground truth; on the 7b profile, the independent judge
GOLD = "ground-truth" if profile.has_ground_truth else "judged"
EVAL = protocol(profile, gold)        # the course's one evaluation protocol
base_eval = evaluate_policy(base, tokenizer, **EVAL)
for s in base_eval.samples[:6:2]:
    print(f"{s.prompt!r}\n  base model: {s.completion.text!r}  (reward {s.reward:+.2f})")
print(f"\nbase model, mean {GOLD} reward on the held-out prompts: {base_eval.summary()['reward']:.3f}")

# %% [markdown]
# ## 2. The completion-only loss
#
# A training sequence is the chat template applied to the prompt *and* the answer. A Hugging Face causal
# LM computes the loss itself when given `labels` (the same shape as `input_ids`; it shifts them inside:
# the logits at $t$ are scored against `labels[t + 1]`), and it skips every position whose label is
# **-100** (the `ignore_index` of `cross_entropy`). So "learn to answer, not to ask" is a matter of
# labels: -100 on the prompt's tokens and on the padding, the token id on the answer's tokens,
# including its end-of-answer token (the model must learn when to stop). TRL's `SFTTrainer` does exactly
# this with `completion_only_loss=True` (the default for prompt/completion data), which
# `rlhf_course.sft.train_sft` sets.

# %%
row = demos[0]
text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
ids = tokenizer(text, add_special_tokens=False).input_ids
n_prompt = len(tokenizer(prompt_text, add_special_tokens=False).input_ids)
print(f"{len(ids)} tokens, the first {n_prompt} are the prompt:")
print(" ".join(f"[{t}]" if i < n_prompt else t for i, t in enumerate(tokenizer.convert_ids_to_tokens(ids))))
print("(in brackets: no loss)")


# %% [markdown]
# ### Exercise 3.1 — Completion-only labels
# *Difficulty ●○○ · importance: high (a silent bug when wrong: training runs, the model learns the wrong
# thing) · about 10 minutes · checked against the labels TRL's SFT collator builds, then on the tiny
# model: the loss with your labels must be the answer-only NLL.*
#
# A batch is **right-padded** (as for training); `attention_mask` is 0 on padding. Careful: the pad token
# can be a real token too (some tokenizers pad with the end-of-sequence token), so find the padding with
# the mask, not by comparing token ids. The package's version is `rlhf_course.sft.completion_labels`.
#
# **Mistakes the check names**: nothing masked; 0 instead of -100; the prompt not masked; the padding not
# masked; the end-of-turn token masked (the model must learn to stop); every token equal to the pad token
# masked (a tokenizer that pads with its end-of-turn token); the prompt off by one; the labels shifted;
# `input_ids` changed in place.
#
# <details><summary>Hint 2 (two masks)</summary>
#
# `is_prompt = torch.arange(T)[None, :] < prompt_lengths[:, None]` is True on the prompt positions, (B, T).
# `input_ids.masked_fill(is_prompt | (attention_mask == 0), -100)` returns a new tensor.
#
# </details>

# %%
def completion_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """Labels for the completion-only SFT loss: input_ids, with -100 on each row's first prompt_lengths[i]
    tokens and wherever attention_mask is 0. Do not shift them (the model does).

    input_ids, attention_mask: (B, T) right-padded; prompt_lengths: (B,). Returns (B, T) long.
    """
    B, T = input_ids.shape
    assert attention_mask.shape == (B, T) and prompt_lengths.shape == (B,)
    # SOLUTION
    # STUB return input_ids.clone()
    # HINT compare every position's index with its row's prompt length; the padding is where the mask says so
    is_prompt = torch.arange(T, device=input_ids.device)[None, :] < prompt_lengths[:, None]   # (B, T)
    return input_ids.masked_fill(is_prompt | (attention_mask == 0), -100)                       # a copy
    # END SOLUTION


# %%
completion_labels = check_completion_labels(completion_labels)


# %% [markdown]
# What the mask changes: the loss of the base model on 32 demonstrations, with the prompt counted and
# without. Here the two numbers are close (the toy prompts are about as predictable as the answers), but
# the gradients differ: with the prompt counted, part of every step is spent on learning to write the
# user's questions, and on real data, where prompts are long, the loss mostly measures them.

# %%
def demo_batch(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, prompt_lengths) of prompt + answer conversations, right-padded."""
    seqs, prompt_lengths = [], []
    for r in rows:
        full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        prompt = tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        seqs.append(torch.tensor(tokenizer(full, add_special_tokens=False).input_ids))
        prompt_lengths.append(len(tokenizer(prompt, add_special_tokens=False).input_ids))
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tokenizer.pad_token_id)
    attention_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
    return input_ids, attention_mask, torch.tensor(prompt_lengths)


@torch.no_grad()
def answer_loss(model, rows: list[dict]) -> float:
    """Mean NLL per answer token (the SFT loss) of `model` on prompt/completion rows."""
    input_ids, attention_mask, prompt_lengths = demo_batch(rows)
    model.eval()
    labels = completion_labels(input_ids, attention_mask, prompt_lengths)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()


rows = demos.select(range(32)).to_list()
input_ids, attention_mask, prompt_lengths = demo_batch(rows)
with torch.no_grad():
    everything = base(input_ids=input_ids, attention_mask=attention_mask,
                      labels=input_ids.masked_fill(attention_mask == 0, -100)).loss.item()
print(f"base model on 32 demonstrations: loss {everything:.2f} per token with the prompt counted, "
      f"{answer_loss(base, rows):.2f} on the answers only")


# %% [markdown]
# ## 3. LoRA: train a low-rank update, freeze the rest
#
# Full fine-tuning updates every weight, and keeps a gradient and two AdamW moments for each: for a 7B
# model in 16-bit that is far beyond a 15 GB GPU. **LoRA** (Hu et al. 2021, arXiv:2106.09685) freezes
# the pretrained weight $W_0 \in \mathbb{R}^{d_\text{out} \times d_\text{in}}$ and learns a low-rank update:
#
# $$h = W_0 x + \Delta W x = W_0 x + \frac{\alpha}{r} B A x, \qquad A \in \mathbb{R}^{r \times d_\text{in}},\; B \in \mathbb{R}^{d_\text{out} \times r},\; r \ll d.$$
#
# - $A$ starts random and $B$ starts at **zero**, so $\Delta W = 0$: training starts exactly at the pretrained
#   model.
# - Trainable parameters per layer: $r(d_\text{in} + d_\text{out})$ instead of $d_\text{in} d_\text{out}$.
# - $\alpha / r$ scales the update, so changing $r$ does not change the effective learning rate much
#   (here $r = 16$, $\alpha = 32$, on q/k/v/o/gate/up/down_proj as in QLoRA).
# - After training, $W = W_0 + \frac{\alpha}{r}BA$ can be **merged**: no extra cost at inference
#   (`rlhf_course.sft.save_merged` does it; the course's SFT model is such a merged model).
#
# Why does a low rank suffice? The paper finds that the update fine-tuning needs has a low "intrinsic
# rank": adapting a model to a task moves it along few directions.
#
# ### Exercise 3.2 — The LoRA forward pass
# *Difficulty ●○○ · importance: high · about 10 minutes · checked against peft's `lora.Linear` holding the
# same $W_0$, $A$ and $B$ (a square and a rectangular layer), and with $B = 0$.*
#
# `W` has `nn.Linear`'s layout `(out, in)`: the frozen layer computes `x @ W.T`.
#
# **Mistakes the check names**: the scale $\alpha / r$ missing, upside down ($r / \alpha$) or $\alpha$
# alone; the LoRA branch missing; the frozen layer's output missing; `x @ W` instead of `x @ W.T`; `x`
# changed in place. It tries three ranks and scales.
#
# <details><summary>Hint 2 (the line)</summary>
#
# `x @ W.T + (alpha / r) * ((x @ A.T) @ B.T)`: `x @ A.T` is (..., r), then `@ B.T` is (..., out).
#
# </details>

# %%
def lora_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int) -> torch.Tensor:
    """A LoRA linear layer: x W^T + (alpha / r) x A^T B^T (no bias, no dropout).

    x: (..., in); W: (out, in) frozen; A: (r, in); B: (out, r). Returns (..., out).
    """
    assert A.shape == (r, W.shape[1]) and B.shape == (W.shape[0], r)
    # SOLUTION
    # STUB return x @ W.T
    # HINT the frozen layer's output plus the scaled low-rank branch; apply A before B, so the (out, in) matrix B A is never built
    frozen = x @ W.T                      # (..., out)
    update = (x @ A.T) @ B.T              # (..., r) then (..., out): never builds the (out, in) matrix B A
    return frozen + (alpha / r) * update
    # END SOLUTION


# %%
lora_forward = check_lora_forward(lora_forward)


# %% [markdown]
# ### Exercise 3.3 — How many parameters does LoRA train?
# *Difficulty ●●○ · importance: medium (it decides what fits on a GPU) · about 10 minutes · checked
# against peft's trainable-parameter count on the tiny model (r = 8 on q/v, as in the LoRA paper, and
# r = 16 on all seven projections) and against Mistral-7B's published shapes.*
#
# `config` is a Hugging Face model config (`hidden_size`, `intermediate_size`, `num_hidden_layers`,
# `num_attention_heads`, `num_key_value_heads`, and `head_dim`, which may be missing: then it is
# `hidden_size // num_attention_heads`). In a Llama/Mistral block, q/k/v/o_proj are the attention's
# projections (with grouped-query attention, k and v have only `num_key_value_heads` heads) and
# gate/up/down_proj the MLP's. The package's version is `rlhf_course.gpu_memory.count_lora_params`.
#
# **Mistakes the check names**: k and v sized without grouped-query attention; one block counted, not
# all layers; $r \cdot d_\text{in} \cdot d_\text{out}$ per layer; only $A$, or only $B$; the frozen weights
# counted; the MLP taken as hidden x hidden; every layer taken as square.
#
# <details><summary>Hint 2 (the shapes)</summary>
#
# (in, out) of each projection: q `(H, heads * head_dim)`, k and v `(H, kv_heads * head_dim)`, o
# `(heads * head_dim, H)`, gate and up `(H, I)`, down `(I, H)`. Sum `r * (in + out)` over the targets,
# times the number of layers `L`.
#
# </details>

# %%
def count_lora_params(config, r: int, targets: tuple[str, ...]) -> int:
    """Trainable parameters of LoRA with rank r on the `targets` linear layers of every block."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or H // config.num_attention_heads
    # SOLUTION
    # STUB return 0
    # HINT write down (in_features, out_features) of each of the 7 projections of one block, then count A and B
    q_dim, kv_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = {"q_proj": (H, q_dim), "k_proj": (H, kv_dim), "v_proj": (H, kv_dim), "o_proj": (q_dim, H),
              "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
    return L * sum(r * (d_in + d_out) for name, (d_in, d_out) in shapes.items() if name in targets)
    # END SOLUTION


# %%
count_lora_params = check_count_lora_params(count_lora_params)

# %%
with torch.device("meta"):  # the architecture without its weights: counting loads nothing (and no second 7B)
    policy = get_peft_model(AutoModelForCausalLM.from_config(base.config), lora_config(profile))  # + LoRA (peft)
trainable, total = policy.get_nb_trainable_parameters()
mine = count_lora_params(policy.config, profile.lora_r, profile.lora_target_modules)
print(f"{profile.name}: LoRA r={profile.lora_r} trains {trainable:,} of {total:,} parameters "
      f"({100 * trainable / total:.1f}%); count_lora_params says {mine:,}")
arch = gpu_memory.KNOWN_ARCHITECTURES["mistral-7b"]
n_lora, n_all = gpu_memory.lora_parameter_count(arch, 16), gpu_memory.parameter_count(arch)
print(f"Mistral-7B: LoRA r=16 trains {n_lora / 1e6:.1f}M of {n_all / 1e9:.2f}B parameters ({100 * n_lora / n_all:.2f}%)")

# %% [markdown]
# On the tiny model the adapter is a large share: the model is so small that its embeddings and
# projections are of the same order as $r(d_\text{in} + d_\text{out})$. On a 7B model LoRA trains about half a
# percent of the weights, and the optimiser state shrinks by the same factor.
#
# ## 4. Training the SFT model
#
# `rlhf_course.sft.train_sft` is the whole recipe: TRL's `SFTTrainer` with the completion-only loss, a
# LoRA adapter from the profile, AdamW with a cosine schedule. The course's SFT model
# (`trained_models.sft_model(profile)`) is `train_sft(profile)` with its defaults: 200 steps of 32
# demonstrations. Here we run 30 steps to see the loss fall, and compare with the shipped model. (On the
# `7b` profile: 30 QLoRA steps of 16 real demonstrations, an estimated 5-10 minutes on a T4; nothing
# ships for a 7B, section 7 trains the full run.)

# %%
# NBVAL_IGNORE_OUTPUT
STEPS = min(30, profile.sft_steps)  # the shipped SFT model had profile.sft_steps (200 on the tiny profile)
if profile.one_base_at_a_time:  # a T4 holds one 4-bit 7B: the base model goes before train_sft loads its own
    del base
    free_memory()
result = train_sft(profile, demos, steps=STEPS, progress=False)
print(f"{STEPS} steps: final training loss {result.history[-1]['loss']:.3f} (first logged: {result.history[0]['loss']:.3f})")

# %%
plot_training_curves(result.history, ["loss", "mean_token_accuracy"], title=f"SFT with LoRA, {STEPS} steps")

# %%
# NBVAL_IGNORE_OUTPUT
evals = {"base": base_eval, f"SFT, {STEPS} steps": evaluate_policy(result.model, tokenizer, **EVAL)}
if profile.has_ground_truth:  # the course ships the toy world's SFT model; a 7B's is trained in section 7
    sft_path = trained_models.sft_model(profile)   # 200 steps of train_sft
    shipped = load_policy(profile, lora=False, model_id=sft_path, verbose=False)
    evals["SFT, shipped"] = evaluate_policy(shipped, tokenizer, **EVAL)
if profile.one_base_at_a_time:  # its metrics and history stay; its 4-bit model goes before section 5 loads one
    result.model = None
    free_memory()
for name, e in evals.items():
    print(f"{name:<14} mean {GOLD} reward {e.summary()['reward']:+.3f}")

# %%
plot_reward_distributions(evals, title=f"{GOLD.capitalize()} reward per answer on held-out prompts")

# %%
mean_reward = {name: e.summary()["reward"] for name, e in evals.items()}
print(f"SFT ({STEPS} steps) beats the base model: {mean_reward[f'SFT, {STEPS} steps'] > mean_reward['base']}")
if profile.has_ground_truth:
    print(f"the shipped SFT model (longer training) beats the {STEPS}-step run: "
          f"{mean_reward['SFT, shipped'] > mean_reward[f'SFT, {STEPS} steps']}")
else:
    print("no shipped SFT model on this profile: section 7 trains the full run")

# %% [markdown]
# Thirty steps already lift the reward; the full run lifts it further. The answers look like the
# demonstrations: on-topic tips in order, an end token. What SFT cannot do is prefer *better* answers
# among good-looking ones, or stop doing what the demonstrations never showed not to do; that is what
# the preference data of notebooks 4-7 is for.
#
# ## 5. QLoRA: the frozen model in 4 bits
#
# LoRA shrinks the *trained* part; the frozen 7B weights still take 14 GB in 16-bit. **QLoRA** (Dettmers
# et al. 2023, arXiv:2305.14314) stores them in 4 bits and back-propagates through them into LoRA
# adapters kept in higher precision. Three ideas:
#
# 1. **NF4 (4-bit NormalFloat)**: pretrained weights are roughly normal, so the 16 levels are placed at
#    quantiles of a normal distribution (each level equally used), scaled per block of 64 weights by the
#    block's absolute maximum. Computation dequantises a block to 16-bit on the fly.
# 2. **Double quantisation**: the per-block scales (one fp32 per 64 weights = 0.5 bit per weight) are
#    themselves quantised to 8 bits, in blocks of 256: about 0.127 bit per weight, 3 GB saved on a 65B model.
# 3. **Paged optimisers**: optimiser states live in NVIDIA unified memory, paged to CPU RAM when a long
#    batch spikes GPU memory, instead of crashing with out-of-memory.
#
# First, NF4's levels against a uniform 4-bit grid, on normally distributed weights:

# %%
W = torch.randn(512, 512, generator=torch.Generator().manual_seed(0)) * 0.02   # a layer's weights, roughly normal
q, state = bnbf.quantize_4bit(W, blocksize=64, quant_type="nf4")
nf4_error = (bnbf.dequantize_4bit(q, state) - W).abs().mean().item()
blocks = W.reshape(-1, 64)                                                      # the same blocks of 64
absmax = blocks.abs().amax(dim=1, keepdim=True)
uniform = (torch.round(blocks / absmax * 7) / 7 * absmax).reshape_as(W)      # 15 evenly spaced levels
uniform_error = (uniform - W).abs().mean().item()

# %%
levels = bnbf.get_4bit_type("nf4", device="cpu")
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.hist((blocks / absmax).flatten().numpy(), bins=80, color="lightgray", density=True, label="weights / block absmax")
ax.vlines(levels.numpy(), 0, 0.6, color="C0", label="NF4 levels")
ax.vlines(torch.arange(-7, 8).numpy() / 7, 0.6, 1.2, color="C3", label="uniform 4-bit levels")
ax.set(xlabel="normalised weight", title="NF4 puts its 16 levels where the weights are")
ax.legend(fontsize="small", loc="upper right")
plt.show()
print(f"{len(levels)} NF4 levels; q holds {q.numel():,} bytes for {W.numel():,} weights (2 per byte)")
print(f"NF4's mean absolute error is smaller than the uniform grid's: {nf4_error < uniform_error}")

# %% [markdown]
# Now the real thing. `load_policy(profile, load_in_4bit=True)` is the 7b profile's path (bitsandbytes
# NF4 with double quantisation, `peft.prepare_model_for_kbit_training`, a LoRA adapter), and
# bitsandbytes runs it on a CPU too, so the tiny model exercises the exact code the 7B uses:

# %%
# NBVAL_IGNORE_OUTPUT
qmodel = load_policy(profile, load_in_4bit=True)
print(qmodel.base_model.model.model.layers[0].self_attn.q_proj)

# %%
layer = qmodel.base_model.model.model.layers[0].self_attn.q_proj
print(f"q_proj's frozen weight: {type(layer.base_layer).__name__}, stored as {layer.base_layer.weight.dtype} "
      f"with shape {tuple(layer.base_layer.weight.shape)} for a {layer.in_features} -> {layer.out_features} layer")
print(f"its LoRA factors: A {tuple(layer.lora_A['default'].weight.shape)}, B {tuple(layer.lora_B['default'].weight.shape)}, "
      f"{layer.lora_A['default'].weight.dtype}, trainable: {layer.lora_A['default'].weight.requires_grad}")
nf4_bytes = qmodel.get_memory_footprint()
if profile.load_in_4bit:  # the profile's own model is 4-bit already: no full-precision copy here to compare
    print(f"memory footprint: {nf4_bytes / 2**30:.2f} GiB with 4-bit blocks + LoRA (section 7 itemises a 7B's)")
else:
    fp32_bytes = base.get_memory_footprint()
    print(f"memory footprint: {fp32_bytes / 2**20:.2f} MiB in fp32, {nf4_bytes / 2**20:.2f} MiB with 4-bit blocks + LoRA")
    print(f"4-bit model + adapter smaller than half the fp32 model: {nf4_bytes < fp32_bytes / 2}")

# %% [markdown]
# Even the tiny model shrinks by more than half, although its embeddings, norms and LoRA adapters stay
# in fp32 (the adapter is now a large share of it). In a 7B model the blocks' linear layers are about 96%
# of the weights, and 4 bits take the model from about 14 GB (fp16) to under 4.5 GB (section 7 itemises
# it). A few QLoRA training steps, through the very same `train_sft` call:

# %%
# NBVAL_IGNORE_OUTPUT
del qmodel  # free it before the next model loads (each is a 4-bit copy of the model: about 4.5 GB for a 7B)
free_memory()
qlora = train_sft(profile, demos, steps=min(5, profile.sft_steps), load_in_4bit=True, progress=False)
qlora_losses = [h["loss"] for h in qlora.history]
print("QLoRA losses:", [round(loss, 3) for loss in qlora_losses])
del qlora
free_memory()

# %%
print(f"QLoRA trained: {len(qlora_losses)} logged steps, finite losses: "
      f"{all(loss == loss and loss < 10 for loss in qlora_losses)}")

# %% [markdown]
# ## 6. What SFT costs: overfitting and forgetting
#
# Two warnings, measured with the answer loss of section 2 on three kinds of text: the demonstrations
# trained on, **held-out** demonstrations (the held-out prompt template), and **pretraining-style text**
# (the base model's own kind of answers).
#
# - **Overfitting**: a small demonstration set, trained on for many epochs, is memorised: its loss goes to
#   zero while held-out loss goes *up*. InstructGPT's SFT overfit after one epoch by validation loss, yet
#   more epochs still helped the reward model's score and human ratings: watch more than the loss. Here we
#   train 30 steps on only 8 demonstrations (30 epochs).
# - **Catastrophic forgetting**: fine-tuning moves the model away from what it knew; the loss on
#   pretraining-style text rises. InstructGPT mixes pretraining gradients into PPO ("PPO-ptx") to limit
#   the regressions it caused on public NLP benchmarks; LoRA's small update forgets less than full
#   fine-tuning, but not nothing.
#
# Both are measured on the toy world's held-out demonstrations and its pretraining-style text, which
# only the tiny model has seen: the `7b` profile skips this section (for a 7B, hold out some of your own
# demonstrations and a sample of general text, and compare the same losses).

# %%
# NBVAL_IGNORE_OUTPUT
if profile.has_ground_truth:
    few = datasets.Dataset.from_list(demos.select(range(8)).to_list())
    texts = {
        "trained demos (8)": few.to_list(),
        "held-out demos": toyworld.make_sft_data(48, seed=1, prompts=toyworld.eval_prompts()),
        "pretraining text": [{"prompt": c[:1], "completion": c[1:]} for c in toyworld.make_pretraining_text(48, seed=5)],
    }
    models = {"base": base, f"SFT, {STEPS} steps": result.model, "SFT, shipped": shipped}
    losses = {m: {t: answer_loss(model, rows) for t, rows in texts.items()} for m, model in models.items()}
    del result, models  # free the 30-step model before the next run
    overfit = train_sft(profile, few, steps=30, progress=False)   # each step sees all 8 demos: 30 epochs
    losses["SFT on 8 demos"] = {t: answer_loss(overfit.model, rows) for t, rows in texts.items()}
    del overfit
    print(f"{'answer loss (nats/token)':<24}" + "".join(f"{t:>20}" for t in texts))
    for m, row in losses.items():
        print(f"{m:<24}" + "".join(f"{v:>20.3f}" for v in row.values()))
else:
    print("skipped: overfitting and forgetting are measured on the toy world's texts, which only the tiny model knows")

# %%
if profile.has_ground_truth:
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(losses)
    for i, (m, row) in enumerate(losses.items()):
        ax.bar([j + i * width for j in range(len(texts))], list(row.values()), width, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(texts))], list(texts))
    ax.set(ylabel="answer loss (nats per token)", title="Overfitting and forgetting")
    ax.legend(fontsize="small")
    plt.show()
    print(f"overfitting: the 8-demo model's loss on its own demos is below 0.2 and on held-out demos above the "
          f"base's: {losses['SFT on 8 demos']['trained demos (8)'] < 0.2 and losses['SFT on 8 demos']['held-out demos'] > losses['base']['held-out demos']}")
    print(f"forgetting: the shipped SFT model's loss on pretraining text is higher than the base's: "
          f"{losses['SFT, shipped']['pretraining text'] > losses['base']['pretraining text']}")
else:
    print("skipped on this profile (see above)")

# %% [markdown]
# The remedies are the ordinary ones: more and more diverse demonstrations, few epochs, early stopping
# on a held-out set (and on a measure of the task, not only the loss), a small learning rate or rank,
# and mixing in some of the original data. The later stages inherit the same tension: the KL penalty of
# PPO and DPO's reference model are how RLHF keeps the policy close to the SFT model.
#
# ## 7. The 7B run: what it needs
#
# On the `7b` profile the cells above run the same calls: `load_policy` loads the 7B chat model in NF4 with
# double quantisation, and `train_sft` trains LoRA adapters (r = 16, all seven projections, fp32
# adapter weights, fp16 compute on a T4, gradient checkpointing), one 4-bit model at a time. The course's memory model
# (`rlhf_course.gpu_memory`, or `rlhf-course memory --method sft --gpu t4`) adds up the peak:

# %%
print(gpu_memory.plan("mistral-7b", "sft", "t4").table())

# %% [markdown]
# Time on a T4 is an estimate, not a measurement: with 16 sequences of up to 384 tokens per optimiser step
# (batch 4 × 4 accumulation), a 4-bit 7B with gradient checkpointing processes a few hundred to a thousand
# tokens per second, so the 7b profile's 100 steps (`profile.sft_steps`) take roughly 10-30 minutes.
# Colab sessions end without warning: pass `checkpoint_dir=` (a Drive folder) and `resume=True` to
# `train_sft` to continue after a disconnect. The cell below runs it only on the `7b` profile: the full
# run on the real demonstrations, saved where `trained_models.sft_model(profile)` looks
# (`$RLHF_COURSE_MODELS`, in Colab best a Drive folder, else `~/.cache/rlhf-course/7b`), so that every
# later notebook starts from it; an SFT model already there is kept, never overwritten. The judge then
# compares it with the base model's answers of section 1.

# %%
if not profile.has_ground_truth:  # the 7b profile: the SFT model of every later notebook
    sft_dir = trained_models.models_dir(profile) / "sft"   # where trained_models.sft_model(profile) looks
    if is_adapter(sft_dir):
        print(f"{sft_dir} holds an SFT adapter already: kept (delete the folder to train it again)")
        sft_7b_model = load_policy(profile, lora=False, model_id=str(sft_dir), verbose=False)
    else:
        sft_7b = train_sft(profile, demos, progress=True)  # profile.sft_steps steps of QLoRA
        display(plot_training_curves(sft_7b.history, ["loss"], title="SFT of the 7B model with QLoRA"))
        print(f"saved the SFT adapter to {save_sft_model(sft_7b.model, tokenizer, sft_dir)}")
        sft_7b_model = sft_7b.model
        del sft_7b
    sft_eval = evaluate_policy(sft_7b_model, tokenizer, baseline=base_eval, **EVAL)
    print(f"judged reward on {len(sft_eval.samples)} held-out prompts: base {base_eval.summary()['reward']:+.3f} -> "
          f"SFT {sft_eval.summary()['reward']:+.3f}; the SFT model's win rate against the base: "
          f"{sft_eval.summary()['win_rate']:.2f}")
    del sft_7b_model
    free_memory()
else:
    print(f"skipped: the 7B run needs the 7b profile (a CUDA GPU with >= 14 GiB); this is the {profile.name} profile")

# %% [markdown]
# ## Summary
#
# - SFT maximises $\log \pi_\theta(y \mid x)$ on demonstrations; only the answer's tokens count (labels -100
#   on the prompt and the padding). It is InstructGPT's step 1 and gives RLHF its starting point and
#   reference model.
# - LoRA trains $\frac{\alpha}{r}BA$ next to a frozen $W_0$ ($B = 0$ at the start), $r(d_\text{in} + d_\text{out})$
#   parameters per layer: well under 1% of a 7B model; merged afterwards at no cost.
# - QLoRA stores the frozen model in NF4 with double quantisation and pages optimiser states: a 7B
#   fine-tune fits a free T4. The same 4-bit path ran here on a CPU.
# - Watch held-out loss and the task's measure: a small demonstration set overfits, and fine-tuning
#   forgets some of what the base model knew.
#
# **Next**: notebook 4, human feedback: comparisons instead of demonstrations.
