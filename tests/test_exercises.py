"""The exercise notebooks are generated from the solutions, and every check can fail: it fails on the
stub the student starts from and passes on the solution."""

import ast
import contextlib
import io

import nbformat
import pytest

from rlhf_course.exercises import NOTEBOOKS, SETUP_CELL, SOLUTIONS, exercises, generate, has_solution

SOLUTION_FILES = sorted(SOLUTIONS.glob("*.ipynb"))
TEACHING = [p for p in SOLUTION_FILES if not p.name.startswith("00")]


def test_there_are_ten_notebooks_and_their_exercise_versions_are_up_to_date():
    assert [p.name[:2] for p in SOLUTION_FILES] == [f"{i:02d}" for i in range(10)]
    stale = generate(check=True)
    assert not stale, f"run `rlhf-course exercises`: out of date: {[p.name for p in stale]}"
    for path in (NOTEBOOKS).glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert not any(has_solution(c) for c in nb.cells), f"{path.name} still contains a solution"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.name)
def test_each_notebook_opens_with_goals_time_badge_and_the_setup_cell(path):
    cells = nbformat.read(path, as_version=4).cells
    intro = cells[0].source
    for needed in ("colab-badge.svg", "Learning goals", "Prerequisites", "Estimated time"):
        assert needed in intro, f"{path.name}: the first cell should mention {needed!r}"
    first_code = next(c for c in cells if c.cell_type == "code")
    assert first_code.source == SETUP_CELL, f"{path.name}: the first code cell must be the shared setup cell"


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.name)
def test_teaching_notebooks_have_three_checked_exercises(path):
    cells = nbformat.read(path, as_version=4).cells
    n_solution_cells = sum(c.cell_type == "code" and has_solution(c) for c in cells)
    found = exercises(path)
    assert len(found) >= 3, f"{path.name}: {len(found)} checked exercises, at least 3 wanted"
    assert len(found) == n_solution_cells, f"{path.name}: every exercise cell needs a check cell right after it"


def _is_import_cell(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics
        return False
    return bool(tree.body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)


def _run_check(call: str, ns: dict) -> tuple[bool, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = eval(call, ns)
    return ok, out.getvalue()


def _cases():
    for path in TEACHING:
        for i, ex in enumerate(exercises(path)):
            yield pytest.param(path, i, id=f"{path.stem}:{ex.check_name}")


@pytest.mark.parametrize("path, index", list(_cases()))
def test_check_fails_on_the_stub_and_passes_on_the_solution(path, index):
    """Exercises depend only on imports and earlier exercises: run those, then the stub and the solution."""
    cells = nbformat.read(path, as_version=4).cells
    all_exercises = exercises(path)
    target = all_exercises[index]
    ns: dict = {}
    seen = 0
    for cell in cells:
        if cell.cell_type != "code":
            continue
        if _is_import_cell(cell.source):
            exec(cell.source, ns)
        elif has_solution(cell):
            if seen == index:
                exec(target.stub, ns)
                ok, printed = _run_check(target.check_call, ns)
                assert ok is False and "✗" in printed, f"{target.check_name} passed on the stub: {printed}"
                exec(target.solution, ns)
                ok, printed = _run_check(target.check_call, ns)
                assert ok is True and "✓" in printed, f"{target.check_name} failed on the solution: {printed}"
                return
            exec(cell.source, ns)
            seen += 1
    pytest.fail("exercise not found")
