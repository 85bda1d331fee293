"""The course's trained models, so later notebooks need not retrain earlier stages.

On the tiny profile they ship in `data/checkpoints/` (a few MB, safetensors), built by exactly the
code the notebooks teach - `rlhf-course build-checkpoints` rebuilds them (about two minutes):

    sft/                the SFT model: the base + LoRA on the demonstrations, merged (notebook 3)
    rm/                 a reward model on the SFT model: LoRA adapter + score head (notebook 5)
    rm_length_biased/   the same, trained on labels from a labeller who likes long answers (notebook 6)
    rm_ensemble/member{1,2,3}/  three more length-biased reward models, each on its own bootstrap sample of
                        those labels with its own seed: with rm_length_biased, an ensemble of four (notebook 9)

On the 7b profile nothing ships: the chat model already is an SFT model, and reward models are
trained on first use into `~/.cache/rlhf-course/7b/`.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_course import toyworld
from rlhf_course.paths import data_path
from rlhf_course.profiles import Profile

LENGTH_BIAS = 0.25  # the biased labeller's utility per sentence: filler looks +0.15 better than nothing
CACHE_7B = Path.home() / ".cache" / "rlhf-course" / "7b"


def checkpoint_dir(profile: Profile) -> Path:
    return data_path("checkpoints") if profile.name == "tiny" else CACHE_7B


def length_biased_preferences(n: int = toyworld.N_PREF_TRAIN, seed: int = 2) -> list[dict]:
    """The toy world's preference pairs, labelled by someone who likes longer answers (the trap)."""
    return toyworld.make_preference_pairs(n, seed=seed, labeller=toyworld.Labeller(length_bias=LENGTH_BIAS))


def sft_model(profile: Profile, progress: bool = False) -> str:
    """Path of the SFT model every later stage starts from (built on first use if missing)."""
    if profile.load_in_4bit:
        return profile.model_path  # a 7B chat model is already instruction-tuned
    path = checkpoint_dir(profile) / "sft"
    if not (path / "model.safetensors").exists():
        from rlhf_course.loading import load_tokenizer
        from rlhf_course.sft import save_merged, train_sft

        result = train_sft(profile, progress=progress)
        save_merged(result.model, load_tokenizer(profile), path)
    return str(path)


def reward_model(profile: Profile, kind: str = "default", progress: bool = False) -> str:
    """Folder of a reward model adapter on the SFT model: kind "default" (the toy world's labels) or
    "length_biased" (labels with the verbosity trap). Built on first use if missing."""
    assert kind in ("default", "length_biased"), kind
    path = checkpoint_dir(profile) / ("rm" if kind == "default" else "rm_length_biased")
    if not (path / "adapter_model.safetensors").exists():
        from rlhf_course.reward_model import train_reward_model

        data = None if kind == "default" else length_biased_preferences()
        if data is not None:
            import datasets

            data = datasets.Dataset.from_list(data)
        train_reward_model(profile, data, model_id=sft_model(profile, progress), out_dir=str(path), progress=progress)
        _tidy_adapter_folder(profile, path)
    return str(path)


def _tidy_adapter_folder(profile: Profile, path: Path) -> None:
    for extra in ("training_args.bin", "README.md"):  # a pickle and a model card: not needed to load
        (path / extra).unlink(missing_ok=True)
    if profile.name == "tiny":  # record the base as a repository path, not this machine's absolute one
        import json

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
    seed i on its own bootstrap sample of the same labels. Same recipe as `reward_model` otherwise, so the
    members differ only by their data sample and their initialisation. Built on first use if missing."""
    import datasets

    from rlhf_course.reward_model import train_reward_model

    paths = [reward_model(profile, "length_biased", progress)]
    for i in range(1, ENSEMBLE_MEMBERS + 1):
        path = checkpoint_dir(profile) / "rm_ensemble" / f"member{i}"
        if not (path / "adapter_model.safetensors").exists():
            data = datasets.Dataset.from_list(bootstrap_preferences(length_biased_preferences(), seed=i))
            train_reward_model(profile, data, model_id=sft_model(profile, progress), out_dir=str(path),
                               progress=progress, seed=i)
            _tidy_adapter_folder(profile, path)
        paths.append(str(path))
    return paths


def build_checkpoints(profile: Profile, progress: bool = True) -> dict[str, str]:
    """(Re)build every checkpoint of the profile from scratch."""
    import shutil

    for name in ("sft", "rm", "rm_length_biased", "rm_ensemble"):
        shutil.rmtree(checkpoint_dir(profile) / name, ignore_errors=True)
    built = {"sft": sft_model(profile, progress), "rm": reward_model(profile, "default", progress),
             "rm_length_biased": reward_model(profile, "length_biased", progress)}
    for i, path in enumerate(reward_model_ensemble(profile, progress)[1:], start=1):
        built[f"rm_ensemble/member{i}"] = path
    return built
