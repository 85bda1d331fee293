"""One root for the course's exceptions (issue 13.2): every exception class the package defines is a
CourseError, and `errors.explain` (so the CLI, scripts and the notebook handler) turns each into its
message instead of a traceback."""

import importlib
import inspect
import pkgutil

import pytest

import rlhf_course
from rlhf_course import errors
from rlhf_course.errors import CourseError
from rlhf_course.preferences import Problem


def course_exception_classes() -> list[type]:
    """Every public exception class defined in the package, found by importing each of its modules.
    (A private one, like preferences._DuplicateKey, is a signal caught where it is raised.)"""
    found = {}
    for info in pkgutil.walk_packages(rlhf_course.__path__, "rlhf_course."):
        if info.name.endswith(".__main__"):  # importing it runs the CLI
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("rlhf_course") \
                    and not obj.__name__.startswith("_"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CLASSES = course_exception_classes()
# loading.py belongs to another helper this round: the one-line change it needs is
# `class ModelLoadError(CourseError, RuntimeError)` (with `from rlhf_course.errors import CourseError`).


def example(cls: type) -> BaseException:
    """An instance with a one-line message (the problem-list errors get one problem)."""
    if "problems" in inspect.signature(cls.__init__).parameters:
        return cls([Problem("class/ana.jsonl", 3, "decision", "must be one of a, b, tie, skip, got 'c'")])
    return cls("the folder runs/x holds a checkpoint: add --resume to continue it")


def test_the_walk_finds_the_course_exceptions():
    names = {c.__name__ for c in CLASSES}
    assert {"CourseError", "ProfileError", "ModelLoadError", "PreferenceDataError", "LabelFileError", "RunError",
            "OutOfMemory", "PlanError", "VersionError", "CheckFailed"} <= names, names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_course_exception_is_a_course_error_and_explain_gives_its_one_line(cls):
    name = f"{cls.__module__}.{cls.__qualname__}"
    assert issubclass(cls, CourseError), f"{name} does not derive from errors.CourseError"
    err = example(cls)
    message = errors.explain(err)
    assert message == str(err) and "\n" not in message and message


def test_second_bases_are_kept_so_existing_except_clauses_still_catch():
    from rlhf_course.feedback import LabelFileError
    from rlhf_course.preferences import PreferenceDataError
    from rlhf_course.profiles import ProfileError

    for cls in (ProfileError, PreferenceDataError, LabelFileError):
        assert issubclass(cls, ValueError), cls


def test_a_corrupt_label_file_is_a_message_in_the_notebook_not_a_traceback(capsys, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    assert errors.install_notebook_handler()
    bad = tmp_path / "ana.jsonl"
    bad.write_text('{"type": "label", "decision": "maybe"}\n{"type": "label"}\n')
    shell.run_cell("from rlhf_course.feedback import labelling_widget")
    capsys.readouterr()
    result = shell.run_cell(f"labelling_widget([], {str(bad)!r})")
    out = capsys.readouterr()
    assert result.error_in_exec is not None, "the cell still fails"
    assert f"{bad}:1: pair_id: missing field" in out.err and "Traceback" not in out.out + out.err


def test_a_corrupt_label_file_in_a_script_exits_2_with_the_message(capsys, tmp_path):
    from rlhf_course.feedback import LabellingSession

    bad = tmp_path / "ana.jsonl"
    bad.write_text('{"type": "label", "decision": "maybe"}\n')
    with pytest.raises(SystemExit) as e, errors.friendly_errors("script"):
        LabellingSession([], bad)
    assert e.value.code == 2 and capsys.readouterr().err.startswith(f"script: error: {bad}:1: ")
