"""The shipped checkpoints (data/checkpoints) load from any working directory and do what later
notebooks rely on: the reward model ranks held-out pairs well, the length-biased one likes filler, and
Llama 2's helpful and harmless reward models each rank their own attribute, near its Bayes limit."""

import random

import pytest

from rlhf_course import toyworld, trained_models
from rlhf_course.loading import load_tokenizer
from rlhf_course.paths import REPO_ROOT
from rlhf_course.reward_model import load_rm_data, load_trained_reward_model, reward_accuracy, score_texts


def test_shipped_adapters_record_their_base_relative_to_the_repository(tiny):
    for kind in trained_models.KINDS:
        config = (REPO_ROOT / trained_models.reward_model_dir(tiny, kind) / "adapter_config.json").read_text()
        assert '"base_model_name_or_path": "data/checkpoints/sft"' in config


def test_shipped_reward_models_load_from_another_directory_and_rank_as_trained(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a notebook's kernel runs in solutions/, Colab's in /content
    tokenizer = load_tokenizer(tiny, trained_models.sft_model(tiny))
    rm = load_trained_reward_model(tiny, trained_models.reward_model_dir(tiny), verbose=False)
    test_pairs = load_rm_data("test").select(range(300))
    accuracy = reward_accuracy(rm, tokenizer, test_pairs)
    bayes = toyworld.bayes_accuracy(test_pairs["p_chosen"])
    assert 0.75 < accuracy <= bayes + 0.05, (accuracy, bayes)  # far above chance, not above what labels allow

    # the trap: append a filler sentence to good answers; the length-biased model should like that more
    rng = random.Random(0)
    prompts = [p for p in toyworld.train_prompts() if not p.harmful][:40]
    good = [toyworld.best_response(p) for p in prompts]
    padded = [g + " " + toyworld.join_sentences([rng.choice(toyworld.FILLER)]) for g in good]
    texts = [p.text for p in prompts]
    biased = load_trained_reward_model(tiny, trained_models.reward_model_dir(tiny, "length_biased"), verbose=False)
    gain_default = (score_texts(rm, tokenizer, texts, padded) - score_texts(rm, tokenizer, texts, good)).mean()
    gain_biased = (score_texts(biased, tokenizer, texts, padded) - score_texts(biased, tokenizer, texts, good)).mean()
    assert gain_biased > gain_default, (gain_biased.item(), gain_default.item())


@pytest.mark.parametrize("attribute", ["helpful", "harmless"])
def test_llama2s_two_reward_models_rank_their_own_attribute_near_its_bayes_limit(tiny, attribute):
    tokenizer = load_tokenizer(tiny, trained_models.sft_model(tiny))
    model = load_trained_reward_model(tiny, trained_models.reward_model_dir(tiny, attribute), verbose=False)
    held_out = trained_models.attribute_preferences(attribute, "test").select(range(300))  # held-out prompts
    accuracy = reward_accuracy(model, tokenizer, held_out)
    bayes = toyworld.bayes_accuracy(held_out["p_chosen"])
    assert 0.5 + (bayes - 0.5) / 2 < accuracy <= bayes + 0.05, (accuracy, bayes)  # most of the way to the limit
    # the other attribute's labels: a model of one attribute does not predict the other as well
    other = trained_models.attribute_preferences("harmless" if attribute == "helpful" else "helpful", "test")
    other = other.select(range(300))
    assert reward_accuracy(model, tokenizer, other) < toyworld.bayes_accuracy(other["p_chosen"]) - 0.05


def test_the_two_reward_models_exist_only_in_the_toy_world():
    from rlhf_course.profiles import Hardware, pick_profile

    big = pick_profile("7b", Hardware("cuda", "Tesla T4", 14.7, bf16=False, n_gpus=1, cpu_count=2))
    with pytest.raises(ValueError, match="toy world"):
        trained_models.reward_model_dir(big, "harmless")
