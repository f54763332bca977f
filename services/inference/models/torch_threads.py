"""Intra-op thread counts for torch, set by each model in the thread that runs it.

torch (OpenMP) keeps the thread count per OS thread, but `torch.set_num_threads` also
changes the default a thread picks up on its first parallel op. With several models in one
process wanting different counts (embedding instances with one thread each next to a
generator using every core), no model can rely on the default: each sets its own count
before a forward pass, which costs one comparison when it is already right.
"""

from __future__ import annotations

import torch


def use_torch_threads(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
