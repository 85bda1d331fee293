"""The lessons' notebooks, built from text masters: one source of truth that a diff can review.

`solutions/NN_name.py` is the master of each lesson, in jupytext's percent format (`# %%` opens a
code cell, `# %% [markdown]` a markdown cell, whose lines start with `# `). A master does not
repeat what every lesson shares: the line `# SETUP CELL (inserted by rlhf_course.exercises)`, alone
in the first code cell, stands for the shared setup cell (`SETUP_CELL` below), and the Colab badge
above the title is added here too. `rlhf-course exercises` builds two notebooks from each master:

- `solutions/NN_name.ipynb`, the complete notebook with its outputs, which nbval compares. If the
  master's cells are the notebook's cells, the notebook stays as it is; if only text cells changed,
  the stored outputs are kept (they come from the same code); if code changed, the outputs would be
  stale, so the command stops and asks for `--execute NN`, which runs the notebook with nbclient
  the way nbval does (solutions/ as the working folder, the current Python, conftest.py's
  environment; the setup cell pins torch to one thread).
- `notebooks/NN_name.ipynb`, the student's version: the same cells with each answer replaced by a
  stub, and no outputs.

`rlhf-course exercises --check` (the tests, CI) fails with one line per notebook that is out of date
with its master. A notebook edited in Jupyter goes back to its master with `import_notebook(path)`.

Markers, in a solution's code cell (the signature, docstring and shape assert stay outside them,
so the student sees them):

    def discounted_return(rewards, gamma):
        \"\"\"G_0 = sum_t gamma^t r_t.\"\"\"
        # SOLUTION
        # STUB return 0.0
        # HINT each reward is worth less the later it comes
        return sum(gamma**t * r for t, r in enumerate(rewards))
        # END SOLUTION

becomes, in the student's notebook,

    def discounted_return(rewards, gamma):
        \"\"\"G_0 = sum_t gamma^t r_t.\"\"\"
        # Hint: each reward is worth less the later it comes
        return 0.0  # TODO: your code here

Without a `# STUB` line the stub is `raise NotImplementedError(...)`. A "find the bug" exercise gives
the buggy code itself as `# BUGGY` lines: they become the stub as they are, without the TODO marker
(the check then reports the bug they show). In markdown cells, an answer between `<!-- SOLUTION -->`
and `<!-- END SOLUTION -->` becomes "*Your answer here.*".

Hints come in two tiers. The `# HINT` in the code points at the idea, never at the answer; the second
tier, with the formula, is a collapsed `<details><summary>Hint 2 ...</summary> ... </details>` block at
the end of the exercise's markdown cell (the one right above the code), opened only by a student who
wants it. The stub never holds the answer.

The exercise right after a solution cell is checked by a cell `name = check_<name>(name)` from
`rlhf_course.checks`: it prints ✓ or ✗ with the mistake, and hands back the function the cells below
use (the student's once it passes, the package's reference until then), so Run-All on a fresh
student notebook reaches the end. tests/test_exercises.py proves each check says "not implemented
yet" on the stub and passes on the solution, and tests/test_student_notebooks.py runs every student
notebook to its end.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jupytext
import nbformat

from rlhf_course.errors import CourseError
from rlhf_course.paths import REPO_ROOT

SOLUTIONS = REPO_ROOT / "solutions"
NOTEBOOKS = REPO_ROOT / "notebooks"
MASTERS = "[0-9][0-9]_*.py"  # solutions/NN_name.py: every master is picked up, in number order
MD_SOLUTION = re.compile(r"<!-- SOLUTION -->.*?<!-- END SOLUTION -->", re.S)
CHECK_CALL = re.compile(r"^\s*(?:(\w+)\s*=\s*)?(check_\w+)\((\w+)")  # [name =] check_name(name

# jupytext's percent format, without a metadata header; a cell keeps only its tags (nbval reads them).
PERCENT = "py:percent"
PERCENT_FILTERS = {"notebook_metadata_filter": "-all", "cell_metadata_filter": "tags"}
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}

# What conftest.py sets before nbval starts a notebook's kernel: `--execute` runs a notebook in the same
# environment, so the outputs it stores are the ones nbval will reproduce (tests/test_exercises.py checks).
NBVAL_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RLHF_COURSE_PROFILE": "tiny"}
CELL_TIMEOUT_S = 600  # a cell that runs longer is stuck: the notebooks' budget is 2 min in all

# In a master, the shared setup cell is one code cell of this line; the generator puts SETUP_CELL there.
SETUP_LINE = "# SETUP CELL (inserted by rlhf_course.exercises)"

# The first code cell of every notebook: a no-op locally; in Colab it fetches the course and installs only what
# Colab lacks, keeping its torch, its ipywidgets and every preinstalled package in a tested range (rlhf_course.colab).
SETUP_CELL = '''\
# Setup - runs as is locally and in Colab (in Colab: adds what Colab lacks, keeps its torch and its widgets).
import os
import sys

if "google.colab" in sys.modules:
    import subprocess
    if not os.path.isdir("/content/rlhf-course"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/rlhf-course/rlhf-course",
                        "/content/rlhf-course"], check=True)
    if "/content/rlhf-course" not in sys.path:
        sys.path.insert(0, "/content/rlhf-course")
    from rlhf_course.colab import setup_colab
    setup_colab()  # says what it kept and installed; restarts the runtime if a package in use had to change

import rlhf_course
from rlhf_course.errors import install_notebook_handler
from rlhf_course.profiles import pick_profile

rlhf_course.require("0.1.0")  # stops with the fix if the installed package is older than this notebook
install_notebook_handler()    # expected failures (no GPU, out of memory, bad data): a message, no traceback
profile = pick_profile()      # `7b` on a CUDA GPU with >= 14 GiB (a Colab T4), else `tiny`
if profile.device == "cpu":
    import torch
    torch.set_num_threads(1)  # steady timings: on a busy CPU, threads fight over the cores
print(f"profile: {profile.name}")'''


class MasterError(CourseError):
    """A lesson's master cannot become a notebook as it is; the message names the file and the fix."""


def colab_badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/rlhf-course/rlhf-course/blob/main/notebooks/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


# --- master <-> notebook -----------------------------------------------------------------------

def masters(solutions: Path = SOLUTIONS) -> list[Path]:
    """Every lesson's master, `solutions/NN_name.py`, in number order."""
    return sorted(solutions.glob(MASTERS))


def new_cell(cell_type: str, source: str, tags: list[str] | None = None) -> nbformat.NotebookNode:
    make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell,
            "raw": nbformat.v4.new_raw_cell}[cell_type]
    return make(source, metadata={"tags": list(tags)} if tags else {})


def notebook_from_master(path: Path) -> nbformat.NotebookNode:
    """The lesson's notebook as its master says: the Colab badge above the title, SETUP_CELL in place of
    SETUP_LINE; no outputs (new cell ids: `solution_notebook` keeps the stored ones)."""
    path = Path(path)
    text = path.read_text()
    cells = jupytext.reads(text, fmt=PERCENT).cells
    setups = sum(c.cell_type == "code" and c.source.strip() == SETUP_LINE for c in cells)
    if setups != 1:
        raise MasterError(f"{path}: {setups} code cells are `{SETUP_LINE}`; one wanted (the shared setup cell)")
    if not cells or cells[0].cell_type != "markdown":
        raise MasterError(f"{path}: the first cell must be markdown (the title; the Colab badge goes above it)")
    if "colab-badge.svg" in text:
        raise MasterError(f"{path}: holds a Colab badge; remove it, the generator adds it above the title")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": dict(KERNELSPEC)})
    name = path.with_suffix(".ipynb").name
    for i, cell in enumerate(cells):
        source = cell.source
        if i == 0:
            source = f"{colab_badge(name)}\n\n{source}"
        elif cell.cell_type == "code" and source.strip() == SETUP_LINE:
            source = SETUP_CELL
        nb.cells.append(new_cell(cell.cell_type, source, cell.metadata.get("tags")))
    return nb


def master_from_notebook(path: Path) -> str:
    """The percent-format master of a lesson's notebook: its cells and their tags, without outputs,
    SETUP_LINE in place of the setup cell, the Colab badge dropped. `notebook_from_master` of the
    result has the notebook's cell sources (tests/test_exercises.py proves it for every lesson)."""
    path = Path(path)
    stored = nbformat.read(path, as_version=4)
    badge = f"{colab_badge(path.name)}\n\n"
    if not stored.cells or not stored.cells[0].source.startswith(badge):
        raise MasterError(f"{path}: the first cell must start with the Colab badge `{badge.strip()}` and a blank line")
    if sum(c.cell_type == "code" and c.source == SETUP_CELL for c in stored.cells) != 1:
        raise MasterError(f"{path}: no code cell (or more than one) is exercises.SETUP_CELL; "
                          "put the shared setup cell back, as it is, once")
    nb = nbformat.v4.new_notebook(metadata={"jupytext": dict(PERCENT_FILTERS)})
    for i, cell in enumerate(stored.cells):
        source = cell.source
        if i == 0:
            source = source[len(badge):]
        elif cell.cell_type == "code" and source == SETUP_CELL:
            source = SETUP_LINE
        nb.cells.append(new_cell(cell.cell_type, source, cell.get("metadata", {}).get("tags")))
    return jupytext.writes(nb, fmt=PERCENT)


def import_notebook(path: Path) -> Path:
    """Write `solutions/NN_name.py` from `solutions/NN_name.ipynb` (a notebook changed in Jupyter, or merged
    from a branch that changed the notebook). The master's previous text must be committed: it stays in git."""
    path = Path(path)
    master, text = path.with_suffix(".py"), master_from_notebook(path)
    if master.exists() and master.read_text() != text and uncommitted(master):
        raise MasterError(f"{master}: has changes that are not committed, which importing {path.name} would "
                          "overwrite: commit (or stash) them first")
    master.write_text(text)
    return master


def uncommitted(path: Path) -> bool:
    """Whether git sees changes to `path` that are not committed (False outside a git checkout)."""
    status = subprocess.run(["git", "status", "--porcelain", "--", path.name], cwd=path.parent,
                            capture_output=True, text=True)
    return status.returncode == 0 and bool(status.stdout.strip())


# --- the complete notebook: stored outputs kept, or executed -----------------------------------

def cell_key(cell) -> tuple:
    """What the master decides about a cell (nbval reads the tags); outputs and timings are not the master's."""
    return cell.cell_type, cell.source, tuple(cell.get("metadata", {}).get("tags", []))


def keep_cell_ids(nb: nbformat.NotebookNode, stored: nbformat.NotebookNode) -> None:
    """Give `nb`'s cells the stored ids: an unchanged cell its own, an edited one that of the cell it replaces
    (same place, same type), so the notebook's diff shows the edit and not every id changing."""
    unused = defaultdict(list)
    for cell in stored.cells:
        unused[cell_key(cell)].append(cell)
    taken, edited = set(), []
    for i, cell in enumerate(nb.cells):
        if unused[cell_key(cell)]:
            cell.id = unused[cell_key(cell)].pop(0).id
            taken.add(cell.id)
        else:
            edited.append(i)
    for i in edited:
        old = stored.cells[i] if i < len(stored.cells) else None
        if old is not None and old.cell_type == nb.cells[i].cell_type and old.id not in taken:
            nb.cells[i].id = old.id
            taken.add(old.id)


def solution_notebook(master: Path, stored: nbformat.NotebookNode | None) -> tuple[nbformat.NotebookNode, bool]:
    """The complete notebook for `master`, and whether it must be executed to have valid outputs.

    Every cell as in `stored`: `stored` itself. Only text cells changed: the master's cells with the stored
    code cells' outputs, which come from the same code. Code changed, or nothing stored: the master's cells
    without outputs. Cell ids are kept wherever a stored cell has the same key, so a diff shows only changes."""
    fresh = notebook_from_master(master)
    if stored is None:
        return fresh, True
    if [cell_key(c) for c in fresh.cells] == [cell_key(c) for c in stored.cells]:
        return stored, False
    nb = copy.deepcopy(fresh)
    nb.metadata = copy.deepcopy(stored.metadata)
    keep_cell_ids(nb, stored)
    code = [c for c in nb.cells if c.cell_type == "code"]
    stored_code = [c for c in stored.cells if c.cell_type == "code"]
    if [cell_key(c) for c in code] != [cell_key(c) for c in stored_code]:
        nb.metadata.pop("widgets", None)  # the old run's widget state; nbclient stores the new run's
        return nb, True
    for cell, old in zip(code, stored_code):
        cell.id, cell.outputs, cell.execution_count = old.id, old.outputs, old.execution_count
        cell.metadata = copy.deepcopy(old.metadata)
    return nb, False


def execute_notebook(nb: nbformat.NotebookNode, folder: Path, env: dict | None = None) -> float:
    """Run every cell in place as nbval runs the notebook; returns the seconds it took.

    nbval's own kernel (this Python, `--nbval-current-env`), `folder` as the working directory, NBVAL_ENV
    (then `env`: e.g. the 7b profile's rehearsal on a stand-in); the setup cell sets torch to one thread.
    A cell that raises stops the run (nothing is written)."""
    try:
        from jupyter_client.manager import AsyncKernelManager
        from nbclient import NotebookClient
        from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager
    except ImportError as err:
        raise MasterError(f"--execute needs nbclient and nbval: pip install -e '.[test]' ({err})") from err
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name=CURRENT_ENV_KERNEL_NAME, kernel_spec_manager=NbvalKernelspecManager())
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(folder)}})
    t0 = time.perf_counter()
    try:
        client.execute(env={**os.environ, **NBVAL_ENV, **(env or {})}, stderr=subprocess.DEVNULL)  # as nbval: stderr dropped
    finally:
        # nbclient shuts down only the kernels it made itself: ours would live on, each holding its models
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)
    return time.perf_counter() - t0


# --- the student's notebook --------------------------------------------------------------------

def stub_code(source: str) -> str:
    """Replace every `# SOLUTION ... # END SOLUTION` block of a code cell with its stub."""
    out, block, indent = [], None, ""
    for line in source.splitlines():
        marker = line.strip()
        if marker == "# SOLUTION":
            block, indent = [], line[: len(line) - len(line.lstrip())]
            continue
        if marker == "# END SOLUTION":
            assert block is not None, "END SOLUTION without SOLUTION"
            hints = [l.strip()[len("# HINT"):].strip() for l in block if l.strip().startswith("# HINT")]
            stubs = [l.strip()[len("# STUB"):].strip() for l in block if l.strip().startswith("# STUB")]
            buggy = [l.strip()[len("# BUGGY"):].strip() for l in block if l.strip().startswith("# BUGGY")]
            out += [f"{indent}# Hint: {h}" for h in hints]
            if buggy:
                out += [f"{indent}{b}" for b in buggy]
            elif stubs:
                out += [f"{indent}{s}" for s in stubs[:-1]] + [f"{indent}{stubs[-1]}  # TODO: your code here"]
            else:
                out.append(f'{indent}raise NotImplementedError("exercise: write this part")')
            block = None
            continue
        if block is not None:
            block.append(line)
        else:
            out.append(line)
    assert block is None, "SOLUTION without END SOLUTION"
    return "\n".join(out)


def is_buggy(source: str) -> bool:
    """Whether a solution cell's stub is deliberately buggy code (a find-the-bug exercise)."""
    return any(l.strip().startswith("# BUGGY") for l in source.splitlines())


def has_solution(cell) -> bool:
    if cell.cell_type == "code":
        return any(l.strip() == "# SOLUTION" for l in cell.source.splitlines())
    return bool(MD_SOLUTION.search(cell.source))


def student_version(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The exercise notebook: stubs for solutions, no outputs, no execution counts, no saved widget state."""
    nb = copy.deepcopy(solution)
    nb.metadata.pop("widgets", None)  # the solution run's widget views: large, and meaningless without outputs
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = stub_code(cell.source)
            cell.outputs, cell.execution_count = [], None
        elif cell.cell_type == "markdown":
            cell.source = MD_SOLUTION.sub("*Your answer here.*", cell.source)
        cell.get("metadata", {}).pop("execution", None)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


@dataclass
class Generated:
    """What `generate` did: the notebooks it wrote, and one line per notebook still out of date."""

    written: list[Path] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


def shown(path: Path) -> Path:
    """A path as the user typed it: relative to the current folder when inside it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def lesson_numbers(names: list[str], solutions: Path) -> set[str]:
    """`--execute 3 03 03_sft solutions/03_sft.py` all name lesson 03."""
    known = {m.name[:2] for m in masters(solutions)}
    numbers = set()
    for name in names:
        digits = re.match(r"\d+", Path(name).name)
        if not digits or f"{int(digits[0]):02d}" not in known:
            raise MasterError(f"--execute {name}: no master solutions/NN_*.py with that number "
                              f"(known: {sorted(known)})")
        numbers.add(f"{int(digits[0]):02d}")
    return numbers


def generate(solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS, check: bool = False,
             execute: list[str] | None = None, log: Callable[[str], None] = print) -> Generated:
    """Build both notebooks of every master (with `check`, only compare them with what is stored).

    execute: None runs nothing, and a lesson whose code changed is reported, not written; [] runs every
    lesson whose code changed; ["03", ...] runs those lessons, changed or not."""
    if check and execute is not None:
        raise MasterError("--check only compares and runs nothing: use --check or --execute, not both")
    wanted = lesson_numbers(execute or [], solutions)
    done = Generated()
    for master in masters(solutions):
        number, solution = master.name[:2], master.with_suffix(".ipynb")
        stored = nbformat.read(solution, as_version=4) if solution.exists() else None
        nb, needs_run = solution_notebook(master, stored)
        run = execute is not None and (number in wanted if wanted else needs_run)
        if needs_run and not run:
            why = "not built yet from" if stored is None else "its code cells differ from"
            done.stale.append(f"{shown(solution)}: {why} its master {master.name}: "
                              f"run `rlhf-course exercises --execute {number}`")
            continue
        if run:
            log(f"executing {shown(solution)} ...")
            log(f"executed {shown(solution)} in {execute_notebook(nb, solutions):.1f} s")
        for path, text in ((solution, render(nb)), (notebooks / solution.name, render(student_version(nb)))):
            if path.exists() and path.read_text() == text:
                continue
            if check:
                done.stale.append(f"{shown(path)}: out of date with its master {master.name}: run `rlhf-course exercises`")
            else:
                path.parent.mkdir(exist_ok=True)
                path.write_text(text)
                done.written.append(path)
    lessons = {m.stem for m in masters(solutions)}
    fix = {solutions: "import it with rlhf_course.exercises.import_notebook, or delete it",
           notebooks: "delete it (notebooks/ holds only generated notebooks)"}
    for folder in (solutions, notebooks):
        for path in sorted(folder.glob("*.ipynb")):
            if path.stem not in lessons:
                done.stale.append(f"{shown(path)}: no master solutions/{path.stem}.py, so it is never rebuilt: "
                                  f"{fix[folder]}")
    return done


@dataclass
class Exercise:
    """A solution cell and the check cell after it (as tests/test_exercises.py uses them)."""

    notebook: str
    solution: str      # the cell's source, with the answer
    stub: str          # the same cell as the student gets it
    check_call: str    # e.g. "compute_gae = check_compute_gae(compute_gae)"
    check_name: str
    header: str = ""   # the markdown cell right above the solution cell (the exercise's text, its hints)
    buggy: bool = False  # a find-the-bug exercise: the stub is the buggy code


def exercises(path: Path) -> list[Exercise]:
    """Every code exercise of a lesson (its master, or a notebook), paired with the first check call after it."""
    path = Path(path)
    cells = (notebook_from_master(path) if path.suffix == ".py" else nbformat.read(path, as_version=4)).cells
    found = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not has_solution(cell):
            continue
        header = cells[i - 1].source if i and cells[i - 1].cell_type == "markdown" else ""
        for later in cells[i + 1 :]:
            if later.cell_type != "code":
                continue
            call = next((l for l in later.source.splitlines() if CHECK_CALL.match(l)), None)
            if call:
                found.append(Exercise(path.name, cell.source, stub_code(cell.source), call.strip(),
                                      CHECK_CALL.match(call)[2], header, is_buggy(cell.source)))
            break
    return found
