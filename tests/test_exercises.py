"""The lessons' notebooks are built from their text masters (solutions/NN_name.py) and kept in step with
them, and every check can fail: it fails on the stub the student starts from and passes on the solution."""

import ast
import contextlib
import functools
import io
import linecache
import os
import re
import shutil
import subprocess

import nbformat
import pytest

from rlhf_course.cli import main
from rlhf_course.exercises import (
    CHECK_CALL,
    NBVAL_ENV,
    NOTEBOOKS,
    SETUP_CELL,
    SETUP_LINE,
    SOLUTIONS,
    MasterError,
    colab_badge,
    exercises,
    generate,
    has_solution,
    import_notebook,
    master_from_notebook,
    masters,
    notebook_from_master,
)

MASTERS = masters()
TEACHING = [p for p in MASTERS if not p.name.startswith("00")]


@functools.cache
def lesson_cells(master):
    return notebook_from_master(master).cells


def test_lessons_are_numbered_from_00_and_both_notebooks_of_each_are_up_to_date(capsys):
    assert len(MASTERS) == 10  # 00-09
    assert [p.name[:2] for p in MASTERS] == [f"{i:02d}" for i in range(len(MASTERS))]
    assert main(["exercises", "--check"]) == 0, capsys.readouterr().out
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert not any(has_solution(c) for c in nb.cells), f"{path.name} still contains a solution"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_the_master_builds_the_stored_notebooks_cells_and_back(master, tmp_path):
    """The stored outputs are valid for the master's cells (nbval passes without re-executing), and the
    notebook -> master conversion (`master_from_notebook`) loses nothing."""
    stored = nbformat.read(master.with_suffix(".ipynb"), as_version=4).cells
    cells = [(c.cell_type, c.source) for c in stored]
    assert [(c.cell_type, c.source) for c in lesson_cells(master)] == cells
    again = tmp_path / master.name
    again.write_text(master_from_notebook(master.with_suffix(".ipynb")))
    assert [(c.cell_type, c.source) for c in notebook_from_master(again).cells] == cells


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_each_notebook_opens_with_goals_time_badge_and_the_setup_cell_inserted_once(master):
    text = master.read_text()
    assert text.count(SETUP_LINE) == 1 and SETUP_CELL not in text and "colab-badge.svg" not in text
    cells = lesson_cells(master)
    intro = cells[0].source
    assert intro.startswith(colab_badge(master.with_suffix(".ipynb").name) + "\n\n")
    for needed in ("Learning goals", "Prerequisites", "Estimated time"):
        assert needed in intro, f"{master.name}: the first cell should mention {needed!r}"
    assert sum("colab-badge.svg" in c.source for c in cells) == 1
    assert sum(SETUP_CELL in c.source for c in cells) == 1
    first_code = next(c for c in cells if c.cell_type == "code")
    assert first_code.source == SETUP_CELL, f"{master.name}: the first code cell must be `{SETUP_LINE}`"


# --- the generator on a copy of lesson 00 ----------------------------------------------------------

LESSON = "00_setup_and_tour"


@pytest.fixture
def repo(tmp_path):
    """Lesson 00's master and both its notebooks, in a scratch solutions/ and notebooks/."""
    for source in (SOLUTIONS / f"{LESSON}.py", SOLUTIONS / f"{LESSON}.ipynb", NOTEBOOKS / f"{LESSON}.ipynb"):
        (tmp_path / source.parent.name).mkdir(exist_ok=True)
        shutil.copy(source, tmp_path / source.parent.name / source.name)
    return tmp_path


def run(repo, **kwargs):
    return generate(repo / "solutions", repo / "notebooks", log=lambda line: None, **kwargs)


def files(repo) -> dict:
    return {p.relative_to(repo): p.read_bytes() for p in sorted(repo.rglob("*.*"))}


def test_check_passes_on_an_unchanged_copy_and_nothing_is_rewritten(repo):
    before = files(repo)
    assert run(repo, check=True).stale == []
    assert run(repo).written == [] and files(repo) == before


def test_a_code_change_in_the_master_fails_check_and_is_not_written_without_execute(repo):
    master = repo / "solutions" / f"{LESSON}.py"
    master.write_text(master.read_text() + "\n# %%\nprint('a new cell')\n")
    before = files(repo)
    stale = run(repo, check=True).stale
    assert stale == [f"{repo}/solutions/{LESSON}.ipynb: its code cells differ from its master {LESSON}.py: "
                     "run `rlhf-course exercises --execute 00`"]
    done = run(repo)
    assert done.stale == stale and done.written == [] and files(repo) == before


def test_a_text_only_change_keeps_the_stored_outputs_and_cell_ids(repo):
    master, solution = repo / "solutions" / f"{LESSON}.py", repo / "solutions" / f"{LESSON}.ipynb"
    old = nbformat.read(solution, as_version=4)
    master.write_text(master.read_text().replace("# # 0. Setup and a tour", "# # 0. Setup, and a tour", 1))
    stale = run(repo, check=True).stale
    assert stale == [f"{repo}/{folder}/{LESSON}.ipynb: out of date with its master {LESSON}.py: run `rlhf-course exercises`"
                     for folder in ("solutions", "notebooks")]
    assert sorted(run(repo).written) == [repo / "notebooks" / f"{LESSON}.ipynb", solution]
    new = nbformat.read(solution, as_version=4)
    assert new.cells[0].source.count("0. Setup, and a tour") == 1
    assert [c.id for c in new.cells] == [c.id for c in old.cells]
    assert [c.get("outputs") for c in new.cells[1:]] == [c.get("outputs") for c in old.cells[1:]]
    assert run(repo, check=True).stale == []


def test_check_fails_on_a_stale_student_notebook_and_generate_restores_it(repo):
    student = repo / "notebooks" / f"{LESSON}.ipynb"
    good = student.read_bytes()
    nb = nbformat.read(student, as_version=4)
    nb.cells[-1].source += "\nedited by hand"
    nbformat.write(nb, student)
    assert run(repo, check=True).stale == [
        f"{student}: out of date with its master {LESSON}.py: run `rlhf-course exercises`"]
    assert run(repo).written == [student] and student.read_bytes() == good


def test_check_fails_on_a_notebook_without_a_master(repo):
    shutil.copy(repo / "notebooks" / f"{LESSON}.ipynb", repo / "notebooks" / "99_gone.ipynb")
    (repo / "solutions" / f"{LESSON}.py").rename(repo / "solutions" / "00_renamed.py")
    stale = run(repo, check=True).stale
    assert any(line.startswith(f"{repo}/notebooks/99_gone.ipynb: no master") for line in stale)
    assert any(line.startswith(f"{repo}/solutions/{LESSON}.ipynb: no master") for line in stale)


def test_import_notebook_rewrites_the_master_but_never_over_uncommitted_edits(repo):
    master, solution = repo / "solutions" / f"{LESSON}.py", repo / "solutions" / f"{LESSON}.ipynb"
    good = master.read_text()
    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                                       check=True, capture_output=True)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "lesson 00")
    master.write_text(good + "\n# %%\nprint('not committed')\n")
    with pytest.raises(MasterError, match="not committed"):
        import_notebook(solution)
    assert "not committed" in master.read_text()
    git("commit", "-qam", "an edit")
    assert import_notebook(solution) == master and master.read_text() == good


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace(SETUP_LINE, SETUP_LINE + "\n\n# %%\n" + SETUP_LINE), "2 code cells are"),
    (lambda t: t.replace(SETUP_LINE, "print('no setup')"), "0 code cells are"),
    (lambda t: "# %% [markdown]\n# " + colab_badge(f"{LESSON}.ipynb") + "\n#\n" + t[len("# %% [markdown]\n"):],
     "holds a Colab badge"),
])
def test_a_master_without_exactly_one_setup_line_or_with_a_badge_is_refused(repo, edit, says):
    master = repo / "solutions" / f"{LESSON}.py"
    master.write_text(edit(master.read_text()))
    with pytest.raises(MasterError, match=says):
        run(repo, check=True)


def test_execute_names_known_lessons_and_is_not_mixed_with_check(repo):
    with pytest.raises(MasterError, match="--execute 12: no master"):
        run(repo, execute=["12"])
    with pytest.raises(MasterError, match="--check only compares"):
        run(repo, check=True, execute=[])


def test_execute_uses_the_environment_nbval_uses():
    """conftest.py sets these before nbval starts a kernel; --execute must store outputs made the same way."""
    assert {k: os.environ.get(k) for k in NBVAL_ENV} == NBVAL_ENV


def test_a_new_master_is_executed_with_execute_and_then_passes_check(tmp_path):
    (tmp_path / "solutions").mkdir()
    master = tmp_path / "solutions" / "00_new.py"
    master.write_text(f"# %% [markdown]\n# # 0. New\n\n# %%\n{SETUP_LINE}\n\n# %%\n"
                      "import os\nimport torch\n\n"
                      "print(os.path.basename(os.getcwd()), os.environ['RLHF_COURSE_PROFILE'], "
                      "torch.get_num_threads())\n")
    assert run(tmp_path).stale == [f"{tmp_path}/solutions/00_new.ipynb: not built yet from its master 00_new.py: "
                                   "run `rlhf-course exercises --execute 00`"]
    lines = []
    done = generate(tmp_path / "solutions", tmp_path / "notebooks", execute=["0"], log=lines.append)
    assert done.stale == [] and sorted(done.written) == [tmp_path / "notebooks" / "00_new.ipynb",
                                                          tmp_path / "solutions" / "00_new.ipynb"]
    assert lines[-1].startswith(f"executed {tmp_path}/solutions/00_new.ipynb in ") and lines[-1].endswith(" s")
    cells = nbformat.read(tmp_path / "solutions" / "00_new.ipynb", as_version=4).cells
    assert cells[0].source.startswith(colab_badge("00_new.ipynb")) and cells[1].source == SETUP_CELL
    assert cells[1].outputs[-1].text == "profile: tiny\n"
    assert cells[2].outputs[0].text == "solutions tiny 1\n"  # nbval's folder, profile and one thread
    assert run(tmp_path, check=True).stale == []


# --- every check can fail ------------------------------------------------------------------------

@pytest.mark.parametrize("master", TEACHING, ids=lambda p: p.stem)
def test_teaching_notebooks_have_three_checked_exercises(master):
    n_solution_cells = sum(c.cell_type == "code" and has_solution(c) for c in lesson_cells(master))
    found = exercises(master)
    assert len(found) >= 3, f"{master.name}: {len(found)} checked exercises, at least 3 wanted"
    assert len(found) == n_solution_cells, f"{master.name}: every exercise cell needs a check cell right after it"


def _is_import_cell(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics
        return False
    return bool(tree.body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)


def _exec_cell(source: str, ns: dict, name: str) -> None:
    """Run a cell's code as Jupyter does: its functions keep their source (inspect.getsource works)."""
    filename = f"<cell {name} {len(linecache.cache)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), ns)


def _run_check(call: str, ns: dict) -> tuple[bool, str]:
    """Run the check cell's line (`name = check_name(name)`); passed means a ✓ line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(call, ns)
    printed = out.getvalue()
    return printed.startswith("✓"), printed


def _cases():
    for master in TEACHING:
        for i, ex in enumerate(exercises(master)):
            yield pytest.param(master, i, id=f"{master.stem}:{ex.check_name}")


@pytest.mark.parametrize("master, index", list(_cases()))
def test_check_fails_on_the_stub_and_passes_on_the_solution(master, index):
    """Exercises depend only on imports and earlier exercises: run those, then the stub and the solution.
    On the stub the check says "not implemented yet" (a find-the-bug stub: the bug it shows), hands back
    the package's reference under the exercise's name, and refuses that stand-in if given it again."""
    target = exercises(master)[index]
    name = CHECK_CALL.match(target.check_call)[3]
    ns: dict = {}
    seen = 0
    for cell in lesson_cells(master):
        if cell.cell_type != "code":
            continue
        if _is_import_cell(cell.source):
            exec(cell.source, ns)
        elif has_solution(cell):
            if seen == index:
                _exec_cell(target.stub, ns, "stub")
                ok, printed = _run_check(target.check_call, ns)
                assert ok is False and printed.startswith("✗"), f"{target.check_name} passed on the stub: {printed}"
                first = printed.splitlines()[0]
                if target.buggy:
                    assert "not implemented" not in first, first
                else:
                    assert first == f"✗ {name}: not implemented yet" or \
                        first.startswith(f"✗ {name}: not implemented yet - "), first
                assert "the cells below use the course's" in printed
                assert ns[name] is not None and getattr(ns[name], "_rlhf_course_stand_in", False)
                ok, printed = _run_check(target.check_call, ns)  # the check cell run again, without the exercise
                assert ok is False and "still the course's stand-in" in printed, printed
                _exec_cell(target.solution, ns, "solution")
                solution = ns[name]
                ok, printed = _run_check(target.check_call, ns)
                assert ok is True and "✓" in printed, f"{target.check_name} failed on the solution: {printed}"
                assert ns[name] is solution, "a passing check hands back the student's own function"
                return
            exec(cell.source, ns)
            seen += 1
    pytest.fail("exercise not found")


@pytest.mark.parametrize("master", TEACHING, ids=lambda p: p.stem)
def test_each_exercise_has_two_tier_hints_and_lists_the_mistakes_its_check_names(master):
    """The first hint (in the code) points at the idea; the second, collapsed in the exercise's markdown,
    gives the formula; the header says which mistakes the check names; the stub never holds the answer."""
    for ex in exercises(master):
        header = ex.header
        assert header.count("<details>") == 1 and "Hint 2" in header, f"{ex.check_name}: no collapsed second hint"
        intro = header.split("<details>")[0]
        assert re.search(r"names?\b.*:", intro) and "mistakes" in intro.lower(), \
            f"{ex.check_name}: the header should list the mistakes its check names"
        if not ex.buggy:
            assert any(l.strip().startswith("# HINT") for l in ex.solution.splitlines()), f"{ex.check_name}: no first hint"
        answer = [l.strip() for l in ex.solution.split("# SOLUTION")[1].split("# END SOLUTION")[0].splitlines()
                  if l.strip() and not l.strip().startswith("#")]
        stub_lines = {l.strip().split("  # TODO")[0] for l in ex.stub.splitlines()}
        hints = [l for l in ex.stub.splitlines() if l.strip().startswith("# Hint:")]
        for line in answer:
            code = line.split("  #")[0].strip()
            if len(code) > 12 and not ex.buggy:
                assert code not in stub_lines, f"{ex.check_name}: the stub holds an answer line: {code}"
                assert all(code not in h for h in hints), f"{ex.check_name}: the first hint holds an answer line: {code}"


def test_executing_a_notebook_leaves_no_kernel_running(tmp_path):
    """nbclient shuts down only the kernels it starts itself; execute_notebook starts its own (nbval's
    current-environment kernel), so it must end it: a suite that executes twenty notebooks would otherwise
    keep twenty kernels alive, each holding its models."""
    import psutil

    from rlhf_course.exercises import execute_notebook

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; print(os.getpid())")])
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    execute_notebook(nb, tmp_path)
    kernel_pid = int(nb.cells[0].outputs[0]["text"])
    assert kernel_pid not in before
    assert not psutil.pid_exists(kernel_pid) or psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE
