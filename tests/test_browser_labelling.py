"""The labelling widget as a student meets it: notebook 04's labelling cell in JupyterLab, clicked in a real
(headless) Chromium through Playwright; then the page is reloaded, the cell run again, and the label file
read line by line.

JupyterLab serves on 127.0.0.1 only, on a free port, with a token; the server, its kernel and the browser
are stopped at the end. The browser is Debian's chromium (Playwright's own browser download is not used):
where it is missing and this is a root shell with apt-get (CI), the fixture installs it; elsewhere the
test is skipped and says how to install it. Set RLHF_COURSE_SCREENSHOT=docs/labelling_widget.png to keep
the screenshot of the widget (the one in docs/ was made so).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from rlhf_course.feedback import Pair, pair_id
from rlhf_course.paths import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
# As the machine's probe runs it: no sandbox (root), and no background traffic to hosts a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PAIRS = [
    Pair("how do i cook rice ?", "rinse the rice first . good luck .", "that is a silly question ."),
    Pair("how do i fix a flat tire ?", "find the hole with soapy water .", "buy a new car ."),
    Pair("how do i learn to swim ?", "start in shallow water .", "take lessons from a coach ."),
    Pair("how do i bake bread ?", "let the dough rise twice .", "bread is bad for you ."),
    Pair("how do i plant a tree ?", "dig a hole twice as wide as the roots .", "water it every day ."),
]
TIMEOUT_MS = 30_000


def labelling_cell() -> str:
    """Notebook 04's labelling cell, as a student runs it to label by hand (SIMULATE = False)."""
    master = (REPO_ROOT / "solutions" / "04_human_feedback.py").read_text()
    cells = [c.strip() for c in master.split("# %%")]
    cell = next(c for c in cells if "widget = labelling_widget(pairs, LABEL_FILE" in c and "SIMULATE = True" in c)
    return cell.replace("SIMULATE = True", "SIMULATE = False", 1)


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium) to run this test")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 serving a notebook with notebook 04's labelling cell; (url, folder)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    pairs = ",\n    ".join(repr(p) for p in PAIRS)
    nb.cells = [nbformat.v4.new_code_cell(f"from pathlib import Path\nfrom rlhf_course.feedback import Pair, "
                                          f"labelling_widget\n\nWORK = Path('scratch')\npairs = [\n    {pairs},\n]"),
                nbformat.v4.new_code_cell(labelling_cell())]
    nbformat.write(nb, tmp_path / "labelling.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    notification = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "server.log").read_text()[-2000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/labelling.ipynb?token={token}", tmp_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def run_all(page) -> None:
    """Run every cell as a student would (Run > Run All Cells) once the kernel is idle, and wait until the last
    cell has run. A click that comes before the kernel's connection is ready runs nothing: then click again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    last_prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").last
    for attempt in range(3):
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        ran = lambda pattern, timeout: page.wait_for_function(  # noqa: E731
            f"el => /{pattern}/.test(el.textContent)", arg=last_prompt.element_handle(), timeout=timeout)
        try:
            ran(r"\[(\*|\d+)\]", 5_000)  # queued: [*]
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            continue
        ran(r"\[\d+\]", TIMEOUT_MS)  # done: [2]
        return


def test_labelling_widget_clicked_in_chromium(chromium, lab):
    from playwright.sync_api import expect, sync_playwright

    url, folder = lab
    expect.set_options(timeout=TIMEOUT_MS)  # the first run imports torch in the kernel: seconds on a busy CPU
    label_file = folder / "my_labels.jsonl"
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            run_all(page)
            widget = page.locator(".jp-OutputArea-output").filter(has=page.get_by_role("button", name="A is better"))
            status = widget  # the widget's text holds its status line: "N / 5 labelled"
            expect(status).to_contain_text("0 / 5 labelled")
            expect(widget).to_contain_text(PAIRS[0].prompt)

            widget.get_by_role("button", name="A is better").click()
            expect(status).to_contain_text("1 / 5 labelled")
            widget.get_by_role("button", name="B is better").click()
            expect(status).to_contain_text("2 / 5 labelled")
            widget.get_by_role("button", name="tie").click()
            expect(status).to_contain_text("3 / 5 labelled")
            widget.get_by_role("checkbox", name="much better").check()
            widget.get_by_role("button", name="A is better").click()
            expect(status).to_contain_text("4 / 5 labelled")
            expect(widget.get_by_role("checkbox", name="much better")).not_to_be_checked()  # reset for the next pair
            widget.get_by_role("button", name="undo").click()
            expect(status).to_contain_text("3 / 5 labelled")
            expect(widget).to_contain_text(PAIRS[3].prompt)  # the undone pair is asked again

            page.reload()  # the page goes; the kernel and the label file stay
            run_all(page)  # the cell again: a new session replays the file
            widget = page.locator(".jp-OutputArea-output").filter(has=page.get_by_role("button", name="A is better"))
            status = widget
            expect(status).to_contain_text("3 / 5 labelled (resumed: 3 already labelled)")
            expect(widget).to_contain_text(PAIRS[3].prompt)
            screenshot = folder / "labelling_widget.png"
            widget.screenshot(path=str(screenshot))
            widget.get_by_role("button", name="B is better").click()
            expect(status).to_contain_text("4 / 5 labelled")
            expect(widget).to_contain_text(PAIRS[4].prompt)
        except Exception:
            page.screenshot(path=str(folder / "failure.png"))  # what the page showed, for the report
            print(f"screenshot of the page at the failure: {folder / 'failure.png'}")
            raise
        finally:
            browser.close()
    seconds = time.monotonic() - t0
    if os.environ.get("RLHF_COURSE_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["RLHF_COURSE_SCREENSHOT"])

    records = [json.loads(line) for line in label_file.read_text().splitlines()]
    expected = [("label", PAIRS[0], "a", False), ("label", PAIRS[1], "b", False), ("label", PAIRS[2], "tie", False),
                ("label", PAIRS[3], "a", True), ("undo", PAIRS[3], None, None), ("label", PAIRS[3], "b", False)]
    assert len(records) == len(expected), records
    labeller = records[0]["labeller"]
    assert labeller.startswith("labeller-")  # a hand-labelling student gets a random id, kept in the file
    for record, (kind, pair, decision, much_better) in zip(records, expected):
        assert record["type"] == kind and record["pair_id"] == pair_id(pair.prompt, pair.answer_a, pair.answer_b)
        assert record["labeller"] == labeller
        if kind == "label":
            assert (record["prompt"], record["answer_a"], record["answer_b"]) == (pair.prompt, pair.answer_a, pair.answer_b)
            assert record["decision"] == decision and record["much_better"] is much_better
    print(f"browser session: {seconds:.1f} s")
