"""`rlhf-course train {sft,rm,ppo,dpo} --out DIR`: one training stage as a job that survives its session.

    rlhf-course train sft --out runs/sft
    rlhf-course train rm  --out runs/rm  --sft runs/sft
    rlhf-course train ppo --out runs/ppo --sft runs/sft --rm runs/rm
    rlhf-course train dpo --out runs/dpo --sft runs/sft --max-steps 60
    rlhf-course train dpo --out runs/dpo --sft runs/sft --max-steps 60 --resume   # after the session died

The folder (in Colab: a Google Drive folder, so it outlives the session) holds
    DIR/run.json          the settings of the run; a resume must use the same ones
    DIR/checkpoints/      TRL's checkpoint-N/ folders (SFT, RM, DPO) or PPO's step-N/ folders and the
                          trainer_state.json that commits one (checkpoint_io.py): adapter and value head
                          (safetensors), optimizer and RNG states (safetensors + JSON), step, log
    DIR/model/            the result: a LoRA adapter folder (safetensors) + tokenizer; SFT on a
                          full-precision base: the merged model, which later stages start from
    DIR/metrics.json      written at the end: final loss / accuracy; for PPO the final mean `reward`
A run killed mid-way and started again with --resume ends with the same metrics as an uninterrupted one.
A folder that holds checkpoints or a model is never overwritten unless --resume asks to continue it;
what cannot run (--out a file or read-only, a full disk, --max-steps 0) is one line, before training.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from rlhf_course import checkpoint_io
from rlhf_course.errors import OutOfMemory, RunError, free_accelerator_memory, memory_advice
from rlhf_course.loading import ModelLoadError, load_tokenizer
from rlhf_course.profiles import Profile, pick_profile
from rlhf_course.training import checkpoint_step_of, last_checkpoint

STAGES = ("sft", "rm", "ppo", "dpo")
NOT_COMPARED = ("seconds", "train_seconds", "resumed_from_step")  # differ between a resumed and a straight run


def _settings(stage: str, profile: Profile, max_steps, sft, rm, seed: int, ppo_config: dict) -> dict:
    return {"stage": stage, "profile": profile.name, "max_steps": max_steps, "sft": sft, "rm": rm, "seed": seed,
            **({"ppo_config": ppo_config} if ppo_config else {})}


def checkpoint_step(stage: str, checkpoint_dir: Path) -> int | None:
    """The step of the newest intact checkpoint, or None. Raises RunError when a PPO checkpoint folder
    has nothing intact or holds pickled states."""
    if stage == "ppo":
        found = checkpoint_io.find(checkpoint_dir)
        return found.step if found else None
    last = last_checkpoint(checkpoint_dir)
    return checkpoint_step_of(last) if last else None


def _check_writable(out: Path) -> None:
    """--out must be a folder (or not exist yet) under folders; a file anywhere on the way is one line."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder: choose a folder (it is created if missing)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"--out {out}: {parent} is a file, not a folder: choose another --out")
            break


def _holds_work(out: Path) -> str | None:
    """What in `out` a new run would overwrite: checkpoints, a model or metrics (None: nothing)."""
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return f"checkpoints ({checkpoints})"
    if (out / "model").exists():
        return f"a model ({out / 'model'})"
    if (out / "metrics.json").exists():
        return "the metrics of a finished run"
    return None


def _check_folder(out: Path, stage: str, settings: dict, resume: bool) -> int | None:
    """Refuse to mix two runs in one folder; returns the step a resume continues from (or None)."""
    _check_writable(out)
    run_file = out / "run.json"
    if not run_file.is_file() and not resume and (work := _holds_work(out)):
        raise RunError(f"{out} holds {work} but no run.json: add --resume to continue that run with the same "
                       "settings, or choose another --out (nothing is overwritten)")
    step = checkpoint_step(stage, out / "checkpoints")
    if run_file.is_file():
        before = json.loads(run_file.read_text())
        if not resume:
            state = "a finished run" if (out / "metrics.json").is_file() else \
                f"an unfinished run (last checkpoint: step {step})" if step else "a run that saved no checkpoint yet"
            raise RunError(f"{out} holds {state} ({before['stage']}): add --resume to continue it, "
                           "or choose another --out")
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise RunError(f"--resume must repeat the run's settings ({what}); or choose another --out")
    return step


def resolve_model(path: str | None, what: str) -> str | None:
    """A model folder, accepting the --out folder of an earlier `rlhf-course train` run."""
    if path is None:
        return None
    folder = Path(path)
    if (folder / "model").is_dir():
        folder = folder / "model"
    if not folder.is_dir() or not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise ModelLoadError(f"--{what} {path}: not a model folder (no config.json or adapter_config.json); "
                             f"pass the --out folder of `rlhf-course train {what}`")
    return str(folder)


def _base_model(sft: str | None, stage: str, progress: bool) -> str | None:
    """The model a stage starts from: the SFT model (a merged folder, or on a 4-bit base its adapter
    folder: every loader takes either), else the profile's base model."""
    if sft is None and progress:
        print(f"{stage}: no --sft given, starting from the profile's base model "
              "(train one first with `rlhf-course train sft --out DIR`)")
    return sft


def disk_needed(stage: str, profile: Profile, model_id: str | None) -> int | None:
    """About how many bytes a run writes: two checkpoints (the LoRA adapter and AdamW's two moments,
    fp32) and its result (the merged model for SFT on a full-precision base, else the adapter).
    None when the model's size is not known (gpu_memory.py knows the course's models and local folders)."""
    from rlhf_course.gpu_memory import PlanError, architecture, lora_parameter_count, parameter_count

    try:
        arch = architecture(model_id or profile.model_id)
    except (PlanError, OSError, ValueError, KeyError):
        return None
    adapter = 4 * lora_parameter_count(arch, profile.lora_r, profile.lora_target_modules)
    merged = stage == "sft" and not profile.load_in_4bit
    return 2 * 3 * adapter + (4 * parameter_count(arch) if merged else adapter)


def _free_bytes(out: Path) -> int:
    existing = next(p for p in (out, *out.parents) if p.exists())
    return shutil.disk_usage(existing).free


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MiB"


def _prepare_folder(out: Path, settings: dict, need: int | None, resume: bool) -> None:
    """Create `out` and write run.json: the first write, so a folder that cannot be written to (or a
    disk without room for the run) is one line before anything is trained."""
    if need is not None and not resume and _free_bytes(out) < need:
        raise RunError(f"{out}: not enough space on its disk ({_mib(_free_bytes(out))} free; this run writes about "
                       f"{_mib(need)}: two checkpoints and the model). Free some space, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(settings, indent=1))
    except OSError as err:
        if checkpoint_io.is_disk_full(err):
            raise RunError(f"{out}: no space left on its disk: free some space, or choose another --out") from err
        raise RunError(f"--out {out}: cannot write there ({err.strerror or err}): choose a folder you can write to") \
            from err


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise RunError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")


def _save(model, tokenizer, folder: Path, merge: bool) -> None:
    from rlhf_course.sft import save_merged

    if merge:
        save_merged(model, tokenizer, folder)
    else:
        model.save_pretrained(folder, selected_adapters=["default"], safe_serialization=True)
        tokenizer.save_pretrained(folder)


def run_stage(stage: str, out_dir: str | Path, *, profile: Profile | str | None = None, max_steps: int | None = None,
              resume: bool = False, sft: str | None = None, rm: str | None = None, save_every: int | None = None,
              seed: int = 0, progress: bool = True, ppo_config: dict | None = None) -> dict:
    """Train one stage into `out_dir` (see the module's docstring); returns the metrics it wrote.
    `ppo_config`: PPOConfig fields to change from the profile's (ppo only)."""
    if stage not in STAGES:
        raise RunError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
    ppo_config = {k: v for k, v in (ppo_config or {}).items() if v is not None}
    if ppo_config and stage != "ppo":
        raise RunError(f"{', '.join('--' + k.replace('_', '-') for k in ppo_config)}: PPO settings, for `train ppo` only")

    _positive("max_steps", max_steps)
    _positive("save_every", save_every)
    out = Path(out_dir)
    profile = profile if isinstance(profile, Profile) else pick_profile(profile)
    if ppo_config:  # a bad value is one line now, not after the models load
        from rlhf_course.ppo import PPOConfig

        PPOConfig.for_profile(profile, **ppo_config)
    sft, rm = resolve_model(sft, "sft"), resolve_model(rm, "rm")
    settings = _settings(stage, profile, max_steps, sft, rm, seed, ppo_config)
    resumed_from = _check_folder(out, stage, settings, resume)
    if resume and (out / "metrics.json").is_file():
        if progress:
            print(f"{out}: this run had finished; its metrics are in {out / 'metrics.json'}")
        return json.loads((out / "metrics.json").read_text())
    need = disk_needed(stage, profile, sft)
    _prepare_folder(out, settings, need, resume)
    checkpoints = out / "checkpoints"
    if stage in ("rm", "ppo", "dpo"):
        base = _base_model(sft, stage, progress)
    if stage == "ppo" and rm is None and not profile.has_ground_truth:
        raise RunError("ppo needs a reward model: pass --rm DIR (the --out folder of `rlhf-course train rm`)")

    t0 = time.perf_counter()
    failed_oom, disk_full = False, None
    try:
        metrics = _train(stage, out, profile, max_steps, resume, sft if stage == "sft" else base, rm, checkpoints,
                         save_every, seed, progress, ppo_config)
    except torch.cuda.OutOfMemoryError:
        failed_oom = True  # handled below, outside this block, so the failed step's tensors can be freed
    except Exception as err:  # noqa: BLE001 - a full disk becomes a message; anything else is re-raised
        if isinstance(err, RunError) or not checkpoint_io.is_disk_full(err):
            raise
        disk_full = err
    if disk_full is not None:
        step = _safe_step(stage, checkpoints)
        kept = f"the checkpoint of step {step} is kept: " if step else ""
        raise RunError(f"no space left on the disk of {out} ({_mib(_free_bytes(out))} free; this run writes about "
                       f"{_mib(need) if need else 'as much as its model and two checkpoints'}); {kept}free some "
                       "space, then run again with --resume") from disk_full
    if failed_oom:
        free_accelerator_memory()
        step = _safe_step(stage, checkpoints)
        kept = checkpoints if step else None
        raise OutOfMemory(memory_advice(profile, f"{kept} (step {step})" if kept else None, stage))
    metrics = {"stage": stage, "profile": profile.name, **metrics,
               "seconds": round(time.perf_counter() - t0, 1), "resumed_from_step": resumed_from if resume else None}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if progress:
        print(f"{stage}: done; model in {out / 'model'}, metrics in {out / 'metrics.json'}")
    return metrics


def _safe_step(stage: str, checkpoints: Path) -> int | None:
    """checkpoint_step for a message about another failure: a damaged folder must not hide it."""
    try:
        return checkpoint_step(stage, checkpoints)
    except RunError:
        return None


def _train(stage, out, profile, max_steps, resume, model_id, rm, checkpoints, save_every, seed, progress,
           ppo_config) -> dict:
    from rlhf_course.trained_models import preference_split, training_data

    tokenizer = load_tokenizer(profile, model_id)
    if stage == "sft":
        from rlhf_course.sft import save_sft_model, train_sft

        r = train_sft(profile, training_data(profile, sft=True), steps=max_steps, model_id=model_id,
                      checkpoint_dir=checkpoints, resume=resume, save_every=save_every, progress=progress, seed=seed)
        save_sft_model(r.model, tokenizer, out / "model")  # merged, or the adapter on a 4-bit base
        return {"steps": max_steps or profile.sft_steps, "loss": r.history[-1]["loss"], **r.metrics}
    if stage == "rm":
        from rlhf_course.reward_model import train_reward_model

        pairs, held_out = preference_split(profile)
        r = train_reward_model(profile, pairs, held_out, model_id=model_id, steps=max_steps, out_dir=str(out / "model"),
                               checkpoint_dir=checkpoints, resume=resume, save_every=save_every, progress=progress,
                               seed=seed)
        return {"loss": r.history[-1]["loss"], **r.metrics}
    if stage == "dpo":
        from rlhf_course.dpo import train_dpo

        r = train_dpo(profile, training_data(profile), model_id=model_id, steps=max_steps, checkpoint_dir=checkpoints,
                      resume=resume, save_every=save_every, progress=progress, seed=seed)
        _save(r.model, tokenizer, out / "model", merge=False)
        return {"steps": max_steps or profile.dpo_steps, "loss": r.history[-1]["loss"], **r.metrics}
    from rlhf_course.evaluation import prompts_for
    from rlhf_course.gold import gold_reward_fn
    from rlhf_course.ppo import train_ppo

    monitor = gold_reward_fn(profile) if rm is not None else None  # watched, never optimised
    r = train_ppo(profile, model_id=model_id, reward_model_dir=rm, monitor_fn=monitor, steps=max_steps,
                  prompts=prompts_for(profile, "train"), checkpoint_dir=checkpoints, resume=resume,
                  save_every=save_every or 10, progress=progress, seed=seed, **ppo_config)
    _save(r.model, tokenizer, out / "model", merge=False)
    return dict(r.metrics)
