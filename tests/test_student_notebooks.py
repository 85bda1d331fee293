"""Run-All on a fresh student notebook reaches the end: every generated student notebook (notebooks/NN.ipynb,
built here from its master with the stubs in place) is executed to its last cell the way nbval runs a
notebook, and every check cell says "✗ <name>: not implemented yet" - and hands the cells below the
package's reference, so nothing after an unimplemented exercise fails. A find-the-bug exercise, whose stub
is the buggy code, reports the bug instead.

Each notebook takes as long as its solution under nbval (a minute or two on 2 cores): this is the slow
part of the suite, one test per lesson."""

import nbformat
import pytest

from rlhf_course.exercises import CHECK_CALL, exercises, execute_notebook, masters, notebook_from_master, student_version

TEACHING = [p for p in masters() if not p.name.startswith("00")]


def check_cell_lines(nb) -> list[tuple[str, str]]:
    """(check call, the ✓/✗ line it printed) for every check cell of an executed notebook, in order."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        call = next((line.strip() for line in cell.source.splitlines() if CHECK_CALL.match(line)), None)
        if call is None:
            continue
        text = "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
        verdict = next((line for line in text.splitlines() if line[:1] in ("✓", "✗")), "")
        found.append((call, verdict))
    return found


@pytest.mark.parametrize("master", TEACHING, ids=lambda p: p.stem)
def test_run_all_on_the_fresh_student_notebook_reaches_the_end(master, tmp_path):
    nb = student_version(notebook_from_master(master))
    execute_notebook(nb, tmp_path)  # a cell that raises stops here with CellExecutionError
    assert all(out.get("output_type") != "error" for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    lines = check_cell_lines(nb)
    expected = exercises(master)
    assert [call for call, _ in lines] == [ex.check_call for ex in expected]
    for (call, verdict), ex in zip(lines, expected):
        name = CHECK_CALL.match(call)[3]
        if ex.buggy:
            assert verdict.startswith(f"✗ {name}: ") and "not implemented" not in verdict, verdict
        else:
            assert verdict.startswith(f"✗ {name}: not implemented yet"), f"{call}: {verdict!r}"
    stand_ins = [c for c in nb.cells if c.cell_type == "code" and "the cells below use the course's" in
                 "".join(o.get("text", "") for o in c.outputs)]
    assert len(stand_ins) == len(expected)


def test_the_stored_student_notebooks_are_the_ones_tested():
    """What this file executes is what notebooks/ holds (built from the same masters, stubs in place)."""
    for master in TEACHING:
        stored = nbformat.read(master.parent.parent / "notebooks" / master.with_suffix(".ipynb").name, as_version=4)
        built = student_version(notebook_from_master(master))
        assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in built.cells]
