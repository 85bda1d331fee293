"""Shared by the package tests and the notebook run (nbval): no Hub access, quiet tokenizers."""

import os

# Set before anything imports transformers/huggingface_hub: an accidental Hub call fails loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RLHF_COURSE_PROFILE", "tiny")
