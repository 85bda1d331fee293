import statistics

import torch
from safetensors.torch import load_file

from rlhf_course import toyworld
from rlhf_course.loading import load_policy
from rlhf_course.paths import data_path
from rlhf_course.sampling import generate
from rlhf_course.tinymodel import TinyConfig, pretrain


def test_shipped_model_is_a_small_llama_in_safetensors():
    files = {p.name for p in data_path("tiny").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), "safetensors only"
    assert data_path("tiny", "model.safetensors").stat().st_size < 5 * 2**20
    n_params = sum(t.numel() for t in load_file(data_path("tiny", "model.safetensors")).values())
    assert 100_000 < n_params < 1_000_000


def test_base_model_samples_look_like_the_domain_and_leave_room_for_sft(tiny, tokenizer):
    model = load_policy(tiny, lora=False, verbose=False)
    prompts = toyworld.all_prompts() * 2
    answers = generate(model, tokenizer, [p.text for p in prompts], tiny.max_new_tokens, seed=0)
    well_formed = sum(toyworld.is_well_formed(a.text, a.ended) for a in answers) / len(answers)
    assert well_formed >= 0.9, f"only {well_formed:.0%} of the base model's samples are well formed"
    base = statistics.mean(toyworld.reward(p, a.text, a.ended) for p, a in zip(prompts, answers))
    demos = [row["completion"][0]["content"] for row in toyworld.make_sft_data(500, seed=0)]
    demo_prompts = [toyworld.parse_prompt(row["prompt"][0]["content"]) for row in toyworld.make_sft_data(500, seed=0)]
    demo = statistics.mean(toyworld.reward(p, d) for p, d in zip(demo_prompts, demos))
    assert base < demo - 0.3, f"SFT should have something to improve: base {base:.2f} vs demonstrations {demo:.2f}"


def test_rebuild_is_deterministic():
    cfg = TinyConfig(n_conversations=64, steps=2, batch_size=8, warmup_steps=1)
    m1, t1, l1 = pretrain(cfg, progress=False)
    m2, t2, l2 = pretrain(cfg, progress=False)
    assert t1.get_vocab() == t2.get_vocab() and l1 == l2
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
