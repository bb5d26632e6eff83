"""No third-party progress bars or info logs: rplat reports progress itself, once per job.

transformers, huggingface_hub and the GGUF conversion each draw a tqdm bar per model load, so a runner's log
filled with bars for every job. Jobs report progress through their JobContext instead (`rplat status`, the
dashboard, and the runner's line when a job ends).
"""

from __future__ import annotations

import os
import sys


def silence_libraries() -> None:
    """Turn off third-party progress bars and info logs in this process and the processes it starts."""
    # Read when each library is first imported, which in a runner is inside its first job, after this call;
    # TQDM_DISABLE also reaches the bars libraries draw with tqdm directly (transformers' GGUF conversion).
    for name, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules:  # already imported (a runner inside another program): tell it directly
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
