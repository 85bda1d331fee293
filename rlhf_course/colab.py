"""Installing the course in Colab without fighting Colab: keep what Colab has, add what it lacks.

A Colab runtime comes with most of the course's packages preinstalled (torch with CUDA, transformers,
accelerate, peft, matplotlib, ipywidgets, ...), and some are already imported when the first cell runs
(the inline plotting backend, the widgets). `pip install -e .` with the exact pins of pyproject.toml would
replace them under the live kernel: stale modules in memory ("you must restart the runtime"), and an
ipywidgets 8 that Colab's widget manager does not render (googlecolab/colabtools#3020, #4525). So in
Colab the notebooks' setup cell calls `setup_colab()`, which

1. updates the clone of the course (`git pull`) and installs it without its dependencies (`--no-deps`);
2. keeps every course package whose installed version lies in its tested range (`colab_ranges`): from the
   version Colab had when the course's tests last passed with it (`TESTED_WITH`) to pyproject's pin;
3. installs the others (missing, too old, or newer than tested) at the newest version of that range -
   pyproject's pin - with pip constraints that hold torch, every kept package and every package
   already imported at their installed versions, so pip cannot replace them to satisfy a dependency;
4. if pip can only succeed by replacing a package that is already imported, it does so, and the setup
   cell says so in one line and restarts the runtime (as Google's own Colab notebooks do: ipykernel's
   `do_shutdown(restart=True)`): never continue with stale modules. Run the cell again after the
   restart; it then finds everything in place and installs nothing.

Locally (and in CI) nothing here runs: `pip install -e ".[test]"` installs the exact pins.

This module imports only the standard library (and pip's vendored packaging when needed): it runs
before the course's dependencies are installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from rlhf_course.errors import CourseError

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # a runtime without packaging still has pip's copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

REPO_URL = "https://github.com/rlhf-course/rlhf-course"
COLAB_DIR = Path("/content/rlhf-course")

# The oldest version of each course package that the course's tests passed with (docs/colab.md says how):
# Colab's preinstalled versions of 2026-08-19 (googlecolab/backend-info, pip-freeze.gpu.txt), where the
# tests pass with them. A package Colab does not have (trl, bitsandbytes), or has too old (transformers
# 5.15.0: its TrainingArguments lack `activation_checkpointing`; tokenizers 0.22.2, which transformers 5.23
# refuses; datasets 4.0.0, older than trl needs), is tested only at pyproject's pin: its range is the pin.
TESTED_WITH = {
    "accelerate": "1.14.0",
    "peft": "0.20.0",
    "safetensors": "0.8.0",
    "matplotlib": "3.10.0",
    "tqdm": "4.67.3",
    "nbformat": "5.11.1",
    "jupytext": "1.19.5",
}
# Packages whose installed version is always the right one, whatever pyproject pins:
NEVER_REPLACED = {
    "torch": "the runtime's own build (CUDA); pip would fetch a different one",
    "ipywidgets": "Colab's widget manager renders the ipywidgets Colab ships (7.7.1 in 2026); "
                  "ipywidgets 8 breaks the widgets there",
}


class ColabSetupError(CourseError, RuntimeError):
    """The course cannot be installed into this runtime as asked; the message says what to do."""

    def _render_traceback_(self):  # IPython shows these lines instead of a traceback
        return [str(self)]


class RestartRuntime(ColabSetupError):
    """A package in use was replaced: the runtime restarts; run the setup cell again."""


# --- what to keep, what to install ---------------------------------------------------------------

def pinned_requirements(repo: str | Path) -> dict[str, str]:
    """The course's dependencies as pyproject.toml pins them: {name: "==version" or a range (torch)}."""
    project = tomllib.loads((Path(repo) / "pyproject.toml").read_text())["project"]
    out = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def colab_ranges(pins: dict[str, str]) -> dict[str, SpecifierSet]:
    """The versions of each course package that Colab may keep: from TESTED_WITH (or the pin) to the pin;
    for NEVER_REPLACED packages, any version (what Colab ships is kept as it is)."""
    ranges = {}
    for name, spec in pins.items():
        if name in NEVER_REPLACED:
            ranges[name] = SpecifierSet()
            continue
        pin = _pinned_version(name, spec)
        lowest = TESTED_WITH.get(name, pin)
        ranges[name] = SpecifierSet(f"=={pin}" if lowest == pin else f">={lowest},<={pin}")
    return ranges


def _pinned_version(name: str, spec: str) -> str:
    specs = list(SpecifierSet(spec))
    if len(specs) != 1 or specs[0].operator != "==":
        raise ColabSetupError(f"pyproject.toml: {name}{spec} is not an exact pin (==): the Colab install "
                              "needs the tested version of every package but torch")
    return specs[0].version


@dataclass
class Plan:
    """What the Colab install keeps and what it asks pip for."""

    keep: dict[str, str] = field(default_factory=dict)      # name -> installed version, in its range
    install: dict[str, str] = field(default_factory=dict)   # name -> requirement, e.g. "trl==1.16.0"
    why: dict[str, str] = field(default_factory=dict)       # name -> "missing" / "3.9.0 is older than tested"

    @property
    def requirements(self) -> list[str]:
        return list(self.install.values())


def plan_install(pins: dict[str, str], installed: dict[str, str]) -> Plan:
    """Keep each course package whose installed version lies in its Colab range; install the others.
    torch is never installed (a runtime without it gets a ColabSetupError)."""
    plan = Plan()
    for name, allowed in colab_ranges(pins).items():
        version = installed.get(name)
        if version is not None and Version(version) in allowed:
            plan.keep[name] = version
            continue
        if name == "torch":
            raise ColabSetupError("this runtime has no torch: Colab's runtimes come with it; elsewhere install "
                                  "torch first (pip install torch==2.13.0), then the course")
        plan.install[name] = f"{name}{allowed}"
        lowest = next(s.version for s in allowed if s.operator in (">=", "=="))
        plan.why[name] = ("missing" if version is None else
                          f"{version} is older than tested" if Version(version) < Version(lowest) else
                          f"{version} is newer than tested")
    return plan


# --- the environment as it is ----------------------------------------------------------------------

def installed_versions() -> dict[str, str]:
    """Every installed distribution: {canonical name: version} (the first one on sys.path wins, as for import)."""
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return out


def distributions_in_use(modules=None) -> set[str]:
    """The distributions whose top-level modules are imported in this process (`sys.modules`)."""
    modules = sys.modules if modules is None else modules
    top = {name.split(".")[0] for name in modules}
    owners = metadata.packages_distributions()
    return {canonicalize_name(d) for name in top for d in owners.get(name, [])}


def replaced(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """{name: (old version, new version)} of every distribution installed, removed or changed."""
    return {name: (before.get(name), after.get(name)) for name in before.keys() | after.keys()
            if before.get(name) != after.get(name)}


# --- running pip -----------------------------------------------------------------------------------

def pip(args: list[str], python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *args, "--disable-pip-version-check"], capture_output=True, text=True)


def pip_install_args(plan: Plan, constraints: Path, report: Path | None = None, extra: list[str] = ()) -> list[str]:
    """`pip install` of the plan's requirements (and `extra` ones), under the constraints; with `report`, a dry
    run that only writes pip's installation report there (pip >= 23: `--dry-run --report`)."""
    args = ["install", "-q", "--progress-bar", "off", "-c", str(constraints), *plan.requirements, *extra]
    if report is not None:
        args += ["--dry-run", "--report", str(report)]
    return args


def write_constraints(path: Path, held: dict[str, str]) -> Path:
    """A pip constraints file holding each named distribution at its version (a version that is not PEP 440,
    which pip would refuse to read, is left out: such a package is not one pip would pick anyway)."""
    lines = []
    for name, version in sorted(held.items()):
        try:
            Version(version)
        except InvalidVersion:
            continue
        lines.append(f"{name}=={version}\n")
    path.write_text("".join(lines))
    return path


@dataclass
class ColabInstall:
    """What `setup_colab` did (or, in a dry run, what pip would do)."""

    plan: Plan
    changed: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # every distribution pip changed
    stale: list[str] = field(default_factory=list)   # changed distributions that were imported: restart
    would_install: dict[str, str] = field(default_factory=dict)  # dry run: pip's report, name -> version
    held_in_use: bool = True  # pip succeeded with every imported package held (False: one had to change)

    def summary(self) -> str:
        kept = {n: v for n, v in sorted(self.plan.keep.items()) if n not in self.changed}
        lines = [f"Colab: kept {len(kept)} preinstalled packages ({', '.join(f'{n} {v}' for n, v in kept.items())})"]
        if self.plan.install:
            asked = ", ".join(f"{n} ({self.plan.why[n]})" for n in self.plan.install)
            got = ", ".join(f"{n} {old or '-'} -> {new or 'removed'}" for n, (old, new) in sorted(self.changed.items()))
            lines.append(f"installed: {asked}; pip changed: {got or 'nothing'}")
        return "\n".join(lines)


def install(repo: str | Path, *, dry_run: bool = False, modules=None, python: str = sys.executable) -> ColabInstall:
    """Steps 2-3 of the module's docstring in this Python: keep what fits, install the rest under
    constraints. `dry_run`: ask pip what it would do (`--dry-run --report`), change nothing."""
    before = installed_versions()
    pins = pinned_requirements(repo)
    plan = plan_install(pins, before)
    result = ColabInstall(plan)
    if not plan.install:
        return result
    in_use = {n: before[n] for n in distributions_in_use(modules) if n in before and n not in plan.install}
    torch = {"torch": before["torch"]}
    ranges = colab_ranges(pins)
    within_range = [f"{n}{ranges[n]}" for n in plan.keep if n != "torch"]
    attempts = [  # (held at their installed versions, extra requirements); the first that pip resolves is used
        ({**in_use, **plan.keep}, []),      # a) nothing kept and nothing imported moves
        ({**in_use, **torch}, within_range),  # b) a kept package may move, within its tested range
        (torch, within_range),              # c) an imported package may move too: restart after
    ]
    with tempfile.TemporaryDirectory(prefix="rlhf-course-colab-") as tmp:
        for attempt, (held, extra) in enumerate(attempts):
            constraints = write_constraints(Path(tmp) / "constraints.txt", held)
            report = Path(tmp) / "report.json" if dry_run else None
            done = pip(pip_install_args(plan, constraints, report, extra), python)
            if done.returncode == 0:
                result.held_in_use = attempt < 2
                break
        else:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise ColabSetupError(f"pip could not install {', '.join(plan.requirements)} beside Colab's packages:\n"
                                  f"{tail}\nRuntime > Disconnect and delete runtime gives a fresh runtime; "
                                  "if it happens again, please report it with this message")
        if dry_run:
            entries = json.loads(report.read_text())["install"]
            result.would_install = {canonicalize_name(e["metadata"]["name"]): e["metadata"]["version"] for e in entries}
            return result
    result.changed = replaced(before, installed_versions())
    used = distributions_in_use(modules)
    result.stale = sorted(n for n in result.changed if n in used)
    return result


def install_course(repo: str | Path, python: str = sys.executable) -> None:
    """The course itself, editable and without its dependencies (`install` sees to those); skipped when this
    clone is installed so already, at its version (a second run of the setup cell)."""
    repo = Path(repo).resolve()
    version = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    try:
        dist = metadata.distribution("rlhf-course")
        url = json.loads(dist.read_text("direct_url.json") or "{}")
        if url.get("dir_info", {}).get("editable") and url.get("url") == repo.as_uri() and dist.version == version:
            return
    except metadata.PackageNotFoundError:
        pass
    done = pip(["install", "-q", "--no-deps", "-e", str(repo)], python)
    if done.returncode != 0:
        raise ColabSetupError(f"pip install --no-deps -e {repo} failed:\n{done.stderr.strip()[-800:]}")


def update_clone(repo: Path) -> bool:
    """Clone the course into `repo`, or pull the clone that is there; True when its code changed."""
    if not (repo / ".git").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, str(repo)], check=True)
        return True
    head = lambda: subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],  # noqa: E731
                                  capture_output=True, text=True).stdout.strip()
    old = head()
    subprocess.run(["git", "-C", str(repo), "pull", "-q", "--ff-only"], check=False)  # offline: keep the clone
    return head() != old


def restart_runtime(reason: str) -> None:
    """Say why in one line, restart the kernel the way Colab notebooks do, and stop the cell (and "Run all")."""
    kernel = None
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
    except ImportError:
        pass
    if kernel is not None:
        kernel.do_shutdown(True)  # as Google's Colab notebooks do: the kernel exits, Colab starts a fresh one
        message = f"Restarting the runtime: {reason}. When it is back, run this cell again (it installs nothing then)."
    else:  # not in a kernel: nothing to restart here, the message says what to do
        message = f"Restart the runtime (Runtime > Restart session): {reason}; then run this cell again."
    raise RestartRuntime(message)


def setup_colab(repo: str | Path = COLAB_DIR) -> ColabInstall:
    """The setup cell's work in Colab (the module's docstring, steps 1-4). Prints two lines: what was
    kept, what was installed. Raises RestartRuntime (after asking for the restart) when it must."""
    repo = Path(repo)
    code_changed = update_clone(repo)
    course_loaded = sorted(m for m in sys.modules if m.startswith("rlhf_course.") and m != __name__)
    install_course(repo)
    result = install(repo)
    print(result.summary())
    if result.stale:
        restart_runtime(f"{', '.join(result.stale)} changed while in use")
    if code_changed and course_loaded:
        restart_runtime("the course's code was updated while its modules were loaded")
    return result
