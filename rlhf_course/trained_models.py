"""The course's trained models, so later notebooks need not retrain earlier stages.

    sft = trained_models.sft_model(profile)                 # a folder: pass it as model_id= anywhere
    rm = trained_models.reward_model_dir(profile)           # a reward model adapter on that SFT model
    train, held_out = trained_models.preference_split(profile)  # what it learned from, what it is measured on

On the tiny profile they ship in `data/checkpoints/` (a few MB, safetensors), built by exactly the
code the notebooks teach - `rlhf-course build-checkpoints` rebuilds them (about two minutes):

    sft/                the SFT model: the base + LoRA on the demonstrations, merged (notebook 3)
    rm/                 a reward model on the SFT model: LoRA adapter + score head (notebook 5)
    rm_length_biased/   the same, trained on labels from a labeller who likes long answers (notebook 6)
    rm_helpful/         Llama 2's two reward models (notebook 5): one trained on helpfulness labels only,
    rm_harmless/        one on harmlessness (safety) labels only, both with centred rewards
    rm_ensemble/member{1,2,3}/  three more length-biased reward models, each on its own bootstrap sample of
                        those labels with its own seed: with rm_length_biased, an ensemble of four (notebook 9)

On the 7b profile nothing ships (Hub models, a GPU's hours): they are trained on first use, with the
profile's recipe on its real preference set, into `models_dir(profile)` - `~/.cache/rlhf-course/7b`,
or $RLHF_COURSE_MODELS (in Colab, a Drive folder, so that a new session finds them):

    sft/                the SFT adapter on the 4-bit base (a 4-bit base cannot take it in); notebook 3 saves its own here
    rm/                 the reward model, its LoRA started from the SFT adapter
The length-biased and the two single-attribute reward models exist only where their labellers do: in
the toy world.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets

from rlhf_course import toyworld
from rlhf_course.paths import data_path
from rlhf_course.profiles import Profile

LENGTH_BIAS = 0.25  # the biased labeller's utility per sentence: filler looks +0.15 better than nothing
MODELS_ENV = "RLHF_COURSE_MODELS"
KINDS = ("default", "length_biased", "helpful", "harmless")
FOLDERS = {"default": "rm", "length_biased": "rm_length_biased", "helpful": "rm_helpful", "harmless": "rm_harmless"}
ATTRIBUTE_SEEDS = {"helpful": 3, "harmless": 4}  # the seeds of their training pairs (the test pairs: + 100)
CENTER_REWARDS = 0.01  # Llama 2's safety threshold reads sigmoid(R_s) as a probability: rewards centred on 0


def models_dir(profile: Profile) -> Path:
    """Where the profile's trained models live: shipped in the repository for the toy world's models,
    else built on first use into $RLHF_COURSE_MODELS or ~/.cache/rlhf-course/<profile>."""
    if profile.has_ground_truth:
        return data_path("checkpoints")
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "rlhf-course" / profile.name)


def length_biased_preferences(n: int = toyworld.N_PREF_TRAIN, seed: int = 2) -> list[dict]:
    """The toy world's preference pairs, labelled by someone who likes longer answers (the trap)."""
    return toyworld.make_preference_pairs(n, seed=seed, labeller=toyworld.Labeller(length_bias=LENGTH_BIAS))


def attribute_preferences(attribute: str, split: str = "train") -> datasets.Dataset:
    """The pairs Llama 2's helpful or harmless reward model trains on ("train": the training prompts) or
    is measured on ("test": the held-out prompts), labelled on that one attribute (`make_attribute_preferences`)."""
    from rlhf_course.reward_model import make_attribute_preferences

    if split == "train":
        return make_attribute_preferences(attribute, toyworld.N_PREF_TRAIN, seed=ATTRIBUTE_SEEDS[attribute])
    return make_attribute_preferences(attribute, toyworld.N_PREF_TEST, seed=ATTRIBUTE_SEEDS[attribute] + 100,
                                      prompts=toyworld.eval_prompts())


def training_data(profile: Profile, sft: bool = False) -> datasets.Dataset | None:
    """What the profile's SFT (`sft`) or DPO trains on: None (each trainer's default: the toy world's
    files) on a profile with a ground truth, else a slice of its real preference set (or its
    demonstrations), within its lengths."""
    if profile.has_ground_truth:
        return None
    from rlhf_course.loading import load_tokenizer
    from rlhf_course.preference_sets import load_preference_set, load_sft_set

    load = load_sft_set if sft else load_preference_set
    return load(profile.preference_set, n=profile.preference_pairs, tokenizer=load_tokenizer(profile),
                max_length=profile.max_length)


def preference_split(profile: Profile) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held_out): the pairs the profile's reward model learns from, and those its accuracy is
    measured on - the toy world's train and test files, or a slice of the profile's real preference set
    split 90/10 (the split `reward_model_dir` trains with, so its held-out pairs stay unseen)."""
    if profile.has_ground_truth:
        from rlhf_course.reward_model import load_rm_data

        return load_rm_data("train"), load_rm_data("test")
    split = training_data(profile).train_test_split(test_size=0.1, seed=0)
    return split["train"], split["test"]


def sft_model(profile: Profile, progress: bool = False) -> str:
    """The folder of the SFT model every later stage starts from, built on first use if missing: a merged
    model on a full-precision base, an adapter folder on a 4-bit one (`sft.save_sft_model`)."""
    path = models_dir(profile) / "sft"
    if not ((path / "model.safetensors").exists() or (path / "adapter_model.safetensors").exists()):
        from rlhf_course.loading import free_memory, load_tokenizer
        from rlhf_course.sft import save_sft_model, train_sft

        result = train_sft(profile, training_data(profile, sft=True), progress=progress)
        save_sft_model(result.model, load_tokenizer(profile), path)
        del result
        free_memory()
    return str(path)


def reward_model_dir(profile: Profile, kind: str = "default", progress: bool = False) -> str:
    """The folder of a reward model adapter on the SFT model, built on first use if missing: kind
    "default" (the profile's labels), "length_biased" (the toy world's labels with the verbosity trap), or
    "helpful" / "harmless" (Llama 2's two reward models, each trained on one attribute's labels)."""
    if kind not in KINDS:
        raise ValueError(f"kind is one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "length_biased" and not profile.has_ground_truth:
        raise ValueError("the length-biased labeller belongs to the toy world (tiny profile): on the 7b profile "
                         "reward hacking shows against the reward model itself, with the judge as the gold reward")
    if kind in ATTRIBUTE_SEEDS and not profile.has_ground_truth:
        raise ValueError(f"the {kind}-only labeller belongs to the toy world (tiny profile): a real preference set "
                         "labels helpfulness and harmlessness in separate sets (e.g. hh-rlhf's helpful-base and "
                         "harmless-base); train each with reward_model.train_reward_model")
    path = models_dir(profile) / FOLDERS[kind]
    if not (path / "adapter_model.safetensors").exists():
        from rlhf_course.loading import free_memory
        from rlhf_course.reward_model import train_reward_model

        held_out, center = None, None  # the toy world's test pairs; rewards not centred
        if kind in ATTRIBUTE_SEEDS:
            data, held_out, center = attribute_preferences(kind), attribute_preferences(kind, "test"), CENTER_REWARDS
        elif kind == "length_biased":
            data = datasets.Dataset.from_list(length_biased_preferences())
        elif profile.has_ground_truth:  # the toy world's files: its train and test pairs
            data = None
        else:  # a tenth of the real pairs, held out for the accuracy
            data, held_out = preference_split(profile)
        result = train_reward_model(profile, data, held_out, model_id=sft_model(profile, progress), out_dir=str(path),
                                    center_rewards_coefficient=center, progress=progress)
        del result
        free_memory()
        _tidy_adapter_folder(profile, path)
    return str(path)


def _tidy_adapter_folder(profile: Profile, path: Path) -> None:
    for extra in ("training_args.bin", "README.md"):  # a pickle and a model card: not needed to load
        (path / extra).unlink(missing_ok=True)
    if profile.has_ground_truth:  # shipped: record the base as a repository path, not this machine's
        cfg_path = path / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = "data/checkpoints/sft"
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


ENSEMBLE_MEMBERS = 3  # trained in rm_ensemble/; the shipped rm_length_biased is the ensemble's member 0


def bootstrap_preferences(rows: list[dict], seed: int) -> list[dict]:
    """A bootstrap sample of preference rows: as many rows, drawn with replacement (Efron 1979)."""
    import random

    rng = random.Random(seed)
    return [rows[rng.randrange(len(rows))] for _ in rows]


def reward_model_ensemble(profile: Profile, progress: bool = False) -> list[str]:
    """Folders of an ensemble of length-biased reward models (Coste et al. 2023, arXiv:2310.02743, Sec. 4):
    the shipped `rm_length_biased` (all labels, seed 0) and `ENSEMBLE_MEMBERS` more, member i trained with
    seed i on its own bootstrap sample of the same labels. Same recipe as `reward_model_dir` otherwise, so the
    members differ only by their data sample and their initialisation. Built on first use if missing."""
    from rlhf_course.reward_model import train_reward_model

    paths = [reward_model_dir(profile, "length_biased", progress)]  # refuses a profile without the toy world
    for i in range(1, ENSEMBLE_MEMBERS + 1):
        path = models_dir(profile) / "rm_ensemble" / f"member{i}"
        if not (path / "adapter_model.safetensors").exists():
            data = datasets.Dataset.from_list(bootstrap_preferences(length_biased_preferences(), seed=i))
            train_reward_model(profile, data, model_id=sft_model(profile, progress), out_dir=str(path),
                               progress=progress, seed=i)
            _tidy_adapter_folder(profile, path)
        paths.append(str(path))
    return paths


def build_all(profile: Profile, progress: bool = True) -> dict[str, str]:
    """(Re)build every trained model of the profile from scratch."""
    kinds = KINDS if profile.has_ground_truth else ("default",)
    for name in ("sft", *FOLDERS.values(), "rm_ensemble"):
        shutil.rmtree(models_dir(profile) / name, ignore_errors=True)
    out = {"sft": sft_model(profile, progress)}
    out |= {FOLDERS[k]: reward_model_dir(profile, k, progress) for k in kinds}
    if profile.has_ground_truth:
        for i, path in enumerate(reward_model_ensemble(profile, progress)[1:], start=1):
            out[f"rm_ensemble/member{i}"] = path
    return out
