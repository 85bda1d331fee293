"""Every notebook on the 7b profile, rehearsed on a CPU (issue 9, item 8).

Each master executes whole with RLHF_COURSE_PROFILE=7b and RLHF_COURSE_REHEARSAL=<a stand-in of the 7B>
(`standin.build_standin`: Mistral-7B's architecture shrunk, random weights, the real Mistral tokenizer with
Zephyr's chat template, a stand-in judge). So every 7b path of the notebooks runs: 4-bit loading, the SFT
adapter trained once and reused, the reward model as a second adapter, the judge instead of the ground
truth, and the cells that skip on a profile without one. The numbers mean nothing; nbval stays on the tiny
profile and compares none of these outputs.

The count of live 4-bit bases: the 7b profile's loader refuses a second 4-bit base while one is alive
(`loading._check_one_base`), so a section that keeps two alive fails here; and a last cell, added by the
test, prints how many the notebook still holds at its end, which must be 0 or 1.

The notebooks share one models folder ($RLHF_COURSE_MODELS), in course order, as a student's Colab session
does: notebook 3 saves the SFT adapter that 4-8 start from; notebook 5's reward model is trained on first
use and reused by 6 and 8. Run alone, a notebook trains what it needs on first use.
"""

import re

import pytest

from rlhf_course.exercises import SOLUTIONS, execute_notebook, masters, new_cell, notebook_from_master

MARKER = "live 4-bit bases at the end:"
LAST_CELL = f"from rlhf_course.loading import live_4bit_bases\nprint({MARKER!r}, live_4bit_bases())"


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    from rlhf_course.standin import build_standin

    return build_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """The 7b profile's trained models (SFT adapter, reward model), shared by the notebooks of the session."""
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("master", masters(), ids=lambda path: path.stem)
def test_the_notebook_runs_to_its_end_on_the_7b_rehearsal_holding_at_most_one_4bit_base(master, standin, models_dir):
    nb = notebook_from_master(master)
    nb.cells.append(new_cell("code", LAST_CELL))
    env = {"RLHF_COURSE_PROFILE": "7b", "RLHF_COURSE_REHEARSAL": str(standin), "RLHF_COURSE_MODELS": str(models_dir)}
    seconds = execute_notebook(nb, SOLUTIONS, env=env)  # a cell that raises fails the test (CellExecutionError)
    first = next(c for c in nb.cells if c.cell_type == "code" and c.outputs)
    printed = "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream")
    assert "profile: 7b" in printed, f"{master.name}: the setup cell did not pick the 7b profile: {printed!r}"
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    found = re.search(rf"{re.escape(MARKER)} (\d+)", last)
    assert found, f"{master.name}: the notebook did not run to its end (no output from the last cell: {last!r})"
    assert int(found.group(1)) <= 1, f"{master.name}: {found.group(1)} 4-bit bases alive at the end (at most 1)"
    print(f"{master.name}: {seconds:.0f} s on the 7b rehearsal")  # shown with -s or -rP; measured, not asserted
