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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
