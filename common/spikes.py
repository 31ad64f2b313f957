"""Spike times -> the 1-ms output raster of the dataset (spec 7.2)."""

from __future__ import annotations

import numpy as np


def spike_raster(spike_times_ms, n_bins: int) -> np.ndarray:
    """(n_bins,) bool: a spike at t ms marks bin int(t - 0.5), truncated toward zero (spec 7.2).

    Spikes that fall outside [0, n_bins) are dropped.
    """
    times = np.asarray(spike_times_ms, dtype=np.float64).reshape(-1)
    raster = np.zeros(int(n_bins), dtype=bool)
    bins = np.trunc(times - 0.5).astype(np.int64)
    raster[bins[(bins >= 0) & (bins < n_bins)]] = True
    return raster
