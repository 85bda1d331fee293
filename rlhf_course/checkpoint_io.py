"""PPO's checkpoints: a kill at any moment leaves a checkpoint to continue from, and loading one
never runs code. (SFT, the reward model and DPO use Trainer's checkpoint-N folders: sft.py.)

A checkpoint directory DIR holds one folder per save and, once a folder is complete, a small file
that names it - the commit:

    DIR/step-000010/            adapter/ (safetensors), value_head.safetensors,
                                optimizer.safetensors + optimizer.json, rng_state_<rank>.safetensors + .json,
                                trainer_state.json (step, log, ... and the size of every file above)
    DIR/trainer_state.json      the same state plus "folder": "step-000010"; replaced atomically

A save writes a new step folder, forces it to disk, then replaces DIR/trainer_state.json (write a
temporary file, fsync, rename: atomic on POSIX file systems), then removes folders older than the
previous one. Killed before the rename, the previous checkpoint is still the committed one; after
it, the new one is. The previous folder is kept, so a damaged newest folder (a truncated file, a
file missing) falls back to it, and says so.

No pickle anywhere (a pickle can run code when it is loaded, so a shared or downloaded checkpoint
could take over the machine): tensors go to safetensors, everything else to JSON. A folder that
holds a pickle file (.pt, .pth, .bin, .pkl) is refused without opening it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlhf_course.errors import RunError

STATE = "trainer_state.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")


# --- writing durably ----------------------------------------------------------------------------

def fsync_path(path: Path) -> None:
    """Force a file (or a folder's entries) to disk. Folders cannot be fsync'ed on every system."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. a folder on a file system that does not support it
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    """Replace `path` with `obj` as JSON in one step: a reader sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


# --- states without pickle: tensors as safetensors, the rest as JSON -----------------------------

def _to_json(value):
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def save_optimizer(state_dict: dict, folder: Path) -> None:
    """An optimizer's state_dict as optimizer.safetensors (its tensors) + optimizer.json (the rest)."""
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = _to_json(value)
    save_file(tensors, str(folder / "optimizer.safetensors"))
    meta = {"param_groups": _to_json(state_dict["param_groups"]), "scalars": scalars,
            "indices": [int(i) for i in state_dict["state"]]}
    (folder / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(folder: Path) -> dict:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict] = {i: {} for i in meta["indices"]}
    for key, value in load_file(str(folder / "optimizer.safetensors")).items():
        index, name = key.split(".", 1)
        state[int(index)][name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state[int(index)][name] = _from_json(value)
    return {"state": state, "param_groups": _from_json(meta["param_groups"])}


def save_rng(python_state: tuple, folder: Path, rank: int) -> None:
    """One process's random streams: torch's (CPU, and each GPU's) as tensors, Python's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(folder / f"rng_state_{rank}.safetensors"))
    (folder / f"rng_state_{rank}.json").write_text(json.dumps({"python": _to_json(python_state)}))


def load_rng(folder: Path, rank: int) -> tuple:
    """Restore torch's random streams; returns Python's state (for `random.Random.setstate`)."""
    tensors = load_file(str(folder / f"rng_state_{rank}.safetensors"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return _from_json(json.loads((folder / f"rng_state_{rank}.json").read_text())["python"])


# --- the folders: commit, check, find -----------------------------------------------------------

def _step_of(folder: Path) -> int:
    """N of a folder step-N (or step-N-k, a second save of one step); -1 for any other name."""
    parts = folder.name.split("-")
    ok = len(parts) in (2, 3) and parts[0] == "step" and all(p.isdigit() for p in parts[1:])
    return int(parts[1]) if ok else -1


def step_folders(directory: Path) -> list[Path]:
    """The step-N folders in `directory`, newest first."""
    found = [p for p in directory.glob("step-*") if p.is_dir() and _step_of(p) >= 0]
    return sorted(found, key=_step_of, reverse=True)


def folder_for(directory: Path, step: int) -> Path:
    """Where the save of `step` goes: step-N, never the committed folder or the one before it
    (a second save of one step goes to step-N-1)."""
    keep = _committed_names(directory)
    name, k = f"step-{step:06d}", 1
    while name in keep:
        name, k = f"step-{step:06d}-{k}", k + 1
    return directory / name


def make_empty(folder: Path) -> None:
    """Create `folder`, removing the leftover of a save that was cut short."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _committed(directory: Path) -> Path | None:
    """The folder DIR/trainer_state.json names, if it names one of DIR's step folders."""
    pointer = _read_json(directory / STATE)
    name = pointer.get("folder") if isinstance(pointer, dict) else None
    if not isinstance(name, str) or _step_of(Path(name)) < 0 or "/" in name or "\\" in name:
        return None
    return directory / name


def _committed_names(directory: Path) -> set[str]:
    pointer = _read_json(directory / STATE)
    if not isinstance(pointer, dict):
        return set()
    return {n for n in (pointer.get("folder"), pointer.get("previous")) if isinstance(n, str)}


def _newest_intact(directory: Path, other_than: Path | None = None) -> Path | None:
    committed = _committed(directory)
    if committed is not None and committed != other_than and problem_of(committed) is None:
        return committed
    return next((f for f in step_folders(directory) if f != other_than and problem_of(f) is None), None)


def commit(directory: Path, folder: Path, state: dict) -> None:
    """Make `folder` (complete, every file written) the checkpoint of `directory`: record each file's
    size in its trainer_state.json, force it all to disk, then replace DIR/trainer_state.json."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != STATE}
    for name in files:
        fsync_path(folder / name)
    for sub in {folder, *[(folder / n).parent for n in files]}:
        fsync_path(sub)
    state = {**state, "files": files}
    write_json_atomic(folder / STATE, state)
    fsync_path(directory)
    previous = _newest_intact(directory, other_than=folder)  # kept: the fallback if the new one gets damaged
    write_json_atomic(directory / STATE, {**state, "folder": folder.name,
                                          "previous": previous.name if previous else None})
    keep = {folder.name, previous.name if previous else None}
    for old in directory.glob("step-*"):  # older saves, and leftovers of saves cut short
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def problem_of(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when every file is there at its size."""
    if not folder.is_dir():
        return "missing"
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return (f"holds pickle files ({', '.join(pickles[:3])}), which can run code when loaded: "
                "refused (rlhf-course writes none)")
    state = _read_json(folder / STATE)
    if state is None:
        return f"{STATE} is missing or damaged (the save was cut short)"
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        return f"{STATE} lists no files (not written by this version of rlhf-course)"
    for name, size in state["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is truncated or damaged ({path.stat().st_size} bytes, {size} written)"
    return None


@dataclass
class Found:
    """The checkpoint a resume continues from, and a note when it is not the newest one."""

    folder: Path
    state: dict
    note: str | None = None

    @property
    def step(self) -> int:
        return self.state["step"]


def find(directory: str | Path) -> Found | None:
    """The newest intact checkpoint in `directory`: the committed one if it is intact, else the
    newest intact step folder (with a note saying why). None when nothing was ever committed.
    Raises RunError when something was committed but no folder is intact, or the directory holds
    a checkpoint of an older rlhf-course (pickled states)."""
    directory = Path(directory)
    if not (directory / STATE).exists():
        return None
    pointer = _read_json(directory / STATE)
    damaged = []
    if isinstance(pointer, dict) and "folder" not in pointer:
        raise RunError(f"{directory} holds a checkpoint of an older rlhf-course (pickled optimizer and RNG "
                       "states, which can run code when loaded): it is not loaded. Start the run again "
                       "without resume, in another folder")
    committed = _committed(directory)
    if committed is not None:
        problem = problem_of(committed)
        if problem is None:
            return Found(committed, _read_json(committed / STATE))
        damaged.append(f"{committed.name}: {problem}")
    else:
        damaged.append(f"{STATE}: damaged or names no step folder")
    for folder in step_folders(directory):
        if committed is not None and folder == committed:
            continue
        problem = problem_of(folder)
        if problem is None:
            state = _read_json(folder / STATE)
            note = (f"{directory}: the newest checkpoint is damaged ({'; '.join(damaged)}); "
                    f"continuing from the previous one, step {state['step']}")
            return Found(folder, state, note)
        damaged.append(f"{folder.name}: {problem}")
    raise RunError(f"{directory}: no intact checkpoint to resume from ({'; '.join(damaged)}). Start the run "
                   "again without resume, in another folder")


# --- Trainer's checkpoint-N folders (SFT, reward model, DPO): checked without loading them -----

def file_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot be whole, judged without loading it: a safetensors file whose
    size differs from what its header describes, a torch archive (optimizer.pt, rng_state.pth:
    zip files) without its directory or with members past its end, JSON that does not parse."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > size - 8:
                return f"{path.name} is truncated ({size} bytes)"
            try:
                header = json.loads(f.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError):
                return f"{path.name} is damaged (unreadable header)"
        return None if 8 + n + end == size else f"{path.name} is truncated ({size} bytes, {8 + n + end} written)"
    if path.suffix in PICKLE_SUFFIXES:  # read as a zip archive only: never unpickled here
        try:
            with zipfile.ZipFile(path) as archive:
                if any(i.header_offset + i.compress_size > size for i in archive.infolist()):
                    return f"{path.name} is truncated"
        except (zipfile.BadZipFile, OSError, ValueError):
            return f"{path.name} is truncated or damaged (not a complete archive)"
        return None
    if path.suffix == ".json" and _read_json(path) is None:
        return f"{path.name} is truncated or damaged (not valid JSON)"
    return None


def trainer_checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint-N folder cannot be resumed from, or None. Trainer writes
    trainer_state.json last, so a folder without it was cut short; a file damaged later (a sync
    to Drive cut short, a full disk) is found by `file_problem`."""
    if not (folder / "trainer_state.json").is_file():
        return "cut short (no trainer_state.json)"
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (problem := file_problem(path)):
            return problem
    return None


def is_disk_full(err: BaseException | None) -> bool:
    """A full disk (or quota), also when a library reports it in its own exception (safetensors
    writes from Rust) or as the cause of another one."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(err) for s in ("No space left on device", "StorageFull", "Disk quota exceeded")):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False
