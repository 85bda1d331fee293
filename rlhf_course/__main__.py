"""`python -m rlhf_course ...` is the `rlhf-course` command: it works where the environment's bin folder is
not on PATH (a notebook's `!{sys.executable} -m rlhf_course labels merge ...`)."""

from rlhf_course.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
