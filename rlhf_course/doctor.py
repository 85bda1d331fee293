"""`rlhf-course doctor`: what this machine has, which profile runs and why, the versions of the
stack against the tested ones, and whether the Hugging Face Hub can be reached (never hangs)."""

from __future__ import annotations

import os
import platform
import threading
import urllib.request
from importlib import metadata

from rlhf_course.paths import data_dir
from rlhf_course.profiles import PROFILE_ENV, ProfileError, detect_hardware, pick_profile

STACK = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "tokenizers", "matplotlib")
TESTED_TORCH = "2.13.0"
HUB_URL = "https://huggingface.co/api/models/HuggingFaceH4/zephyr-7b-beta"


def tested_versions() -> dict[str, str]:
    """The versions pinned in the package's requirements (torch: the tested build)."""
    pins = {"torch": TESTED_TORCH}
    for req in metadata.requires("rlhf-course") or []:
        name, _, version = req.split(";")[0].partition("==")
        if version:
            pins[name.strip().lower()] = version.strip()
    return pins


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def hub_status(timeout: float = 3.0) -> str:
    """'reachable', 'offline mode', or why not. Runs in a thread with a hard time limit, because a
    DNS lookup on a machine without network can block longer than any socket timeout."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "not checked: HF_HUB_OFFLINE=1 (offline mode)"
    result = ["not reachable: no answer within %.0f s" % timeout]

    def probe():
        try:
            with urllib.request.urlopen(HUB_URL, timeout=timeout) as r:
                result[0] = f"reachable (HTTP {r.status})"
        except Exception as err:  # any failure means "not reachable"; say which
            result[0] = f"not reachable: {type(err).__name__}: {str(err)[:80]}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return result[0]


def report(profile_name: str | None = None) -> str:
    """What `rlhf-course doctor` prints (problems included, as ERROR lines)."""
    return diagnose(profile_name)[0]


def diagnose(profile_name: str | None = None, tiny_advice: str = "pass profile='tiny'") -> tuple[str, list[str]]:
    """The report, and the problems that stop the course from running here (empty: all is well)."""
    hw = detect_hardware()
    lines, problems = ["rlhf-course doctor", f"  hardware : {hw.describe()}"], []
    try:
        p = pick_profile(profile_name, hw, tiny_advice=tiny_advice)
        lines += [
            f"  profile  : {p.name}  ({p.reason})",
            f"  model    : {p.model_id}{' (local, data/tiny)' if p.model_id == 'tiny' else ''}, "
            f"{'4-bit NF4' if p.load_in_4bit else 'full precision'}, compute {str(p.compute_dtype).replace('torch.', '')}, "
            f"LoRA r={p.lora_r} on {', '.join(p.lora_target_modules)}",
            f"  lengths  : prompt {p.max_prompt_length} + answer {p.max_new_tokens} tokens; batch {p.batch_size} "
            f"x {p.gradient_accumulation_steps} accumulation",
        ]
    except ProfileError as err:
        lines.append(f"  profile  : ERROR: {err}")
        problems.append(str(err))
    lines.append(f"  python   : {platform.python_version()} ({platform.platform(terse=True)})")
    pins = tested_versions()
    for name in STACK:
        have, want = installed_version(name), pins.get(name)
        mark = "ok" if have and want and have.split("+")[0] == want else f"tested with {want}" if want else ""
        lines.append(f"  {name:<13}: {have or 'NOT INSTALLED'}  {mark}")
    try:
        folder = data_dir()
        tiny = (folder / "tiny" / "model.safetensors").is_file()
        lines.append(f"  data     : {folder} (tiny model {'present' if tiny else 'MISSING'})")
        if not tiny:
            problems.append(f"the tiny model is missing from {folder / 'tiny'}: run `rlhf-course build-tiny`")
    except FileNotFoundError as err:
        lines.append(f"  data     : ERROR: {err}")
        problems.append(str(err))
    lines.append(f"  hub      : {hub_status()}")
    if os.environ.get(PROFILE_ENV):
        lines.append(f"  note     : {PROFILE_ENV}={os.environ[PROFILE_ENV]} is set")
    return "\n".join(lines), problems
