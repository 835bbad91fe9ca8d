"""Derived seeds: every random stream of a run is seeded from (run seed, epoch, index).

Nothing draws from global RNG state, so any step of a run can be replayed exactly: that is what makes resume
exact, with or without loader workers, on any number of processes.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """Index values reserved for streams that are not dataset items (items use 0, 1, 2, ...)."""

    EPOCH_ORDER = 2**32 - 1  # the sampler's permutation of an epoch
    POOL_A = 2**32 - 3  # the image pool of fake A images
    POOL_B = 2**32 - 4  # the image pool of fake B images
    DROPOUT = 2**32 - 5  # dropout masks of one step, per process, in multi-process runs
    CUT_DRAWS = 2**32 - 6  # CUT's patch samples and flips (the same on every process)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch, independent of every other (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)
