"""Student notebooks from solution notebooks: one source of truth.

`solutions/NN_name.ipynb` are the complete notebooks (the master copy, executed, with outputs).
`rlhf-course exercises` writes `notebooks/NN_name.ipynb`: the same cells with each answer replaced
by a stub, and every output cleared. `rlhf-course exercises --check` fails if `notebooks/` is stale.

Markers, in a solution's code cell (the signature, docstring and shape assert stay outside them,
so the student sees them):

    def discounted_return(rewards, gamma):
        \"\"\"G_0 = sum_t gamma^t r_t.\"\"\"
        # SOLUTION
        # STUB return 0.0
        # HINT enumerate() gives t and r_t together
        return sum(gamma**t * r for t, r in enumerate(rewards))
        # END SOLUTION

becomes, in the student's notebook,

    def discounted_return(rewards, gamma):
        \"\"\"G_0 = sum_t gamma^t r_t.\"\"\"
        # Hint: enumerate() gives t and r_t together
        return 0.0  # TODO: your code here

Without a `# STUB` line the stub is `raise NotImplementedError(...)`. In markdown cells, an answer
between `<!-- SOLUTION -->` and `<!-- END SOLUTION -->` becomes "*Your answer here.*".

The exercise right after a solution cell is checked by a cell that calls `check_<name>(<name>)`
from `rlhf_course.checks`; tests/test_exercises.py proves each check fails on the stub and passes
on the solution.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from rlhf_course.paths import REPO_ROOT

SOLUTIONS = REPO_ROOT / "solutions"
NOTEBOOKS = REPO_ROOT / "notebooks"
MD_SOLUTION = re.compile(r"<!-- SOLUTION -->.*?<!-- END SOLUTION -->", re.S)
CHECK_CALL = re.compile(r"^\s*(check_\w+)\((\w+)")

# The first code cell of every notebook: a no-op locally; in Colab it installs the course from the
# repository without touching Colab's CUDA torch (the package asks for torch>=2.4, which it has).
SETUP_CELL = '''\
# Setup - runs as is locally and in Colab (in Colab: installs the course, keeps Colab's own torch).
import sys

if "google.colab" in sys.modules:
    import subprocess
    subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/rlhf-course/rlhf-course",
                    "/content/rlhf-course"], check=False)  # already there: keep it
    subprocess.run(["git", "-C", "/content/rlhf-course", "pull", "-q"], check=False)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/rlhf-course"], check=True)
    sys.path.insert(0, "/content/rlhf-course")

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


def colab_badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/rlhf-course/rlhf-course/blob/main/notebooks/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


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
            out += [f"{indent}# Hint: {h}" for h in hints]
            if stubs:
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


def generate(solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS, check: bool = False) -> list[Path]:
    """Write (or with `check`, only compare) every student notebook. Returns the stale or written paths."""
    stale = []
    notebooks.mkdir(exist_ok=True)
    for path in sorted(solutions.glob("*.ipynb")):
        text = render(student_version(nbformat.read(path, as_version=4)))
        target = notebooks / path.name
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not check:
                target.write_text(text)
    if check:
        extra = {p.name for p in notebooks.glob("*.ipynb")} - {p.name for p in solutions.glob("*.ipynb")}
        stale += [notebooks / name for name in sorted(extra)]
    return stale


@dataclass
class Exercise:
    """A solution cell and the check cell after it (as tests/test_exercises.py uses them)."""

    notebook: str
    solution: str      # the cell's source, with the answer
    stub: str          # the same cell as the student gets it
    check_call: str    # e.g. "check_compute_gae(compute_gae)"
    check_name: str


def exercises(path: Path) -> list[Exercise]:
    """Every code exercise of a solution notebook, paired with the first check call after it."""
    cells = nbformat.read(path, as_version=4).cells
    found = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not has_solution(cell):
            continue
        for later in cells[i + 1 :]:
            if later.cell_type != "code":
                continue
            call = next((l for l in later.source.splitlines() if CHECK_CALL.match(l)), None)
            if call:
                found.append(Exercise(path.name, cell.source, stub_code(cell.source), call.strip(),
                                      CHECK_CALL.match(call)[1]))
            break
    return found
