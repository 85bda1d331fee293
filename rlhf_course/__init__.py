"""rlhf-course: RLHF from RL basics to PPO and DPO, on a laptop CPU or a 7B model in Colab."""

import logging as _logging

__version__ = "0.1.0"


def require(minimum: str) -> None:
    """A notebook's first call: stop with a clear message if this rlhf-course is older than `minimum`."""
    from rlhf_course.errors import require as _require

    _require(minimum)


class _DropKernelsHint(_logging.Filter):
    # bitsandbytes' CPU backend suggests `pip install kernels`, which would fetch code from the Hub;
    # its built-in CPU kernels are what the course uses, so the hint is only noise for students.
    def filter(self, record: _logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHint())
