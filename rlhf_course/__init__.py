"""rlhf-course: RLHF from RL basics to PPO and DPO, on a laptop CPU or a 7B model in Colab."""

import logging as _logging

__version__ = "0.1.0"


class _DropKernelsHint(_logging.Filter):
    # bitsandbytes' CPU backend suggests `pip install kernels`, which would fetch code from the Hub;
    # its built-in CPU kernels are what the course uses, so the hint is only noise for students.
    def filter(self, record: _logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHint())
