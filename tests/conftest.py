import pytest
import torch

from rlhf_course.profiles import Hardware, pick_profile

CPU = Hardware("cpu", cpu_count=2)


@pytest.fixture(scope="session")
def tiny():
    """The tiny profile, as on a CPU-only machine."""
    return pick_profile("tiny", CPU)


@pytest.fixture(scope="session")
def tokenizer(tiny):
    from rlhf_course.loading import load_tokenizer

    return load_tokenizer(tiny)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tiny model is too small for two threads to help, and on a shared 2-core machine they fight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fails_with():
    """`fails_with(check_fn, candidate, words)`: assert that a notebook check rejects `candidate` with a
    ✗ line that names the mistake (contains `words`)."""
    from rlhf_course.checks.core import run_check

    def assert_fails(check_fn, candidate, words: str) -> None:
        ok, printed = run_check(check_fn, candidate)
        assert ok is False and printed.startswith("✗") and words in printed, printed

    return assert_fails


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
