"""The NeuronIO input generator: 1278 doubly stochastic spike trains per simulation (spec section 5).

One draw makes, for every dendritic segment, one excitatory and one inhibitory spike train
in 1-ms bins. The firing rates are piecewise constant per tree (basal, apical) over coarse
intervals, scaled by a per-segment multiplicative noise and by the segment's length,
smoothed in time by a Gaussian window, and finally sampled twice: an exponential draw
around the rate, then a Bernoulli draw with that probability (Beniaguev et al. 2021).

The random stream is numpy's Generator seeded by SeedSequence([master_seed, simulation_index]),
so simulation i of a dataset is the same whatever process or worker draws it. The draws keep
the order of the spec; the statistics, not the exact numbers of NeuronIO's legacy stream,
are reproduced.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import fftconvolve
from scipy.signal.windows import gaussian

from .config import InputConfig
from .errors import InputShapeError


def simulation_rng(master_seed: int, simulation_index: int) -> np.random.Generator:
    """The random stream of simulation `simulation_index` in a dataset seeded with `master_seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(master_seed), int(simulation_index)]))


# --------------------------------------------------------------------------- the pieces

def draw_jitter(rng: np.random.Generator, jitter_range_ms: int) -> int:
    """trunc(2 r U - r), U ~ U[0, 1): values -(r-1)..(r-1) with 0 twice as likely (spec 5 step 1)."""
    return int(math.trunc(2 * jitter_range_ms * rng.random() - jitter_range_ms))


def gaussian_smoothing_window(sigma_ms: int) -> np.ndarray:
    """Normalised Gaussian window of M = 7 sigma + 1 samples, spanning +-3.5 sigma (spec 5 step 10)."""
    window = gaussian(7 * int(sigma_ms) + 1, std=sigma_ms)
    return window / window.sum()


# Rows per FFT call in smooth_rates. One call over all 639 rows pads them into complex work arrays of
# about 70-170 MB; blocks of 64 keep those within a few MB, which many draw threads of one process (the
# GPU worker's) can hold at once without faulting in fresh pages. Each row is transformed alone either
# way, so the result is bitwise that of one call (tests/test_inputs.py). Measured (bench/input_drawing.py,
# bench/results/input_drawing.json): 1.29x / 1.51x the rasters/s on 1 / 2 threads of the 2-core machine, but
# 0.87x alone on 16 threads of the GPU machine (repeats spread wider than that); simulate on that machine
# reached its first GPU work sooner with the blocks (95 s against 123 s, another run's seed and machine).
SMOOTHING_BLOCK_ROWS = 64


def smooth_rates(rates: np.ndarray, sigma_ms: int) -> np.ndarray:
    """Convolve each row with the Gaussian window, 'same' size with zero padding.

    output[t] = full[t + (M - 1) // 2], as scipy's 'same' mode; rates near both ends are
    therefore attenuated (about 50% at the very edge). FFT convolution keeps this at a few
    tens of ms for 639 x 6000 even for the widest windows (M up to 4334).
    """
    window = gaussian_smoothing_window(sigma_ms)[np.newaxis, :]
    smoothed = np.empty(rates.shape, dtype=np.result_type(rates, window))
    for start in range(0, rates.shape[0], SMOOTHING_BLOCK_ROWS):
        block = slice(start, start + SMOOTHING_BLOCK_ROWS)
        smoothed[block] = fftconvolve(rates[block], window, mode="same", axes=1)
    # FFT round-off can leave -1e-20 where the rate is 0; a rate is never negative
    return np.maximum(smoothed, 0.0, out=smoothed)


# Output samples per matrix product in smooth_held_rates: each block needs the held values of the
# (block + M) / interval pieces in reach of its samples, so the work grows with the block only slowly,
# while its weights (pieces x block) stay within a few MB for many draw threads at once.
HELD_SMOOTHING_BLOCK_MS = 512


def smooth_held_rates(held: np.ndarray, interval_ms: int, duration_ms: int, sigma_ms: int) -> np.ndarray:
    """smooth_rates of rates held constant over `interval_ms` pieces, without expanding them first.

    Row r of the rates is held[r, k] over [k L, min((k + 1) L, T)) (spec 5 step 9), so the 'same'
    convolution of step 10 is a weighted sum of the pieces, output[r, t] = sum_k held[r, k] B[k, t],
    where B[k, t] is the window summed over the samples piece k covers:
        B[k, t] = C[t + c - k L + 1] - C[t + c - e_k + 1],  C[j] = w[0] + ... + w[j - 1] (0 below 0, 1 above M),
    with c = (M - 1) // 2 and e_k the piece's end. About (M + L) / L pieces reach each output sample, so
    the sums are matrix products over blocks of output samples, cheaper than the FFT's transforms of every
    row at length T + M - 1 for NeuronIO's timescales: whole rasters are drawn 1.7-2.1x faster on the
    2-core development machine, 2.5-2.7x on the GPU machine's 16 cores (bench/input_drawing.py,
    docs/gpu_engine.md). The result equals smooth_rates(np.repeat(held, L)[:, :T]) up to round-off (about
    1e-15 of the largest rate), and the rasters drawn from it are the same bits (tests/test_inputs.py).
    """
    window = gaussian_smoothing_window(sigma_ms)
    m = window.size
    c = (m - 1) // 2
    cumulative = np.concatenate([[0.0], np.cumsum(window)])  # cumulative[j] = w[0] + ... + w[j - 1]
    n_pieces = held.shape[1]
    starts = np.arange(n_pieces) * interval_ms
    ends = np.minimum(starts + interval_ms, duration_ms)
    smoothed = np.empty((held.shape[0], duration_ms), dtype=np.result_type(held, window))
    for t0 in range(0, duration_ms, HELD_SMOOTHING_BLOCK_MS):
        t1 = min(t0 + HELD_SMOOTHING_BLOCK_MS, duration_ms)
        # the pieces [start, end) within reach: start <= t1 - 1 + c and end - 1 >= t0 + c - (M - 1)
        first = max(0, (t0 + c - m + 1) // interval_ms - 1)
        last = min(n_pieces, (t1 - 1 + c) // interval_ms + 1)
        t = np.arange(t0, t1)
        upper = np.clip(t + c + 1 - starts[first:last, None], 0, m)
        lower = np.clip(t + c + 1 - ends[first:last, None], 0, m)
        smoothed[:, t0:t1] = held[:, first:last] @ (cumulative[upper] - cumulative[lower])
    # round-off can leave -1e-20 where the rate is 0; a rate is never negative
    return np.maximum(smoothed, 0.0, out=smoothed)


def _tree_counts(rng: np.random.Generator, config: InputConfig, n_intervals: int) -> tuple[np.ndarray, np.ndarray]:
    """Coarse excitatory and inhibitory spike counts per 100 ms for one tree (spec 5 step 4)."""
    e_low, e_high = config.excitation_per_100ms
    d_low, d_high = config.inhibition_minus_excitation_per_100ms
    excitation = rng.uniform(e_low, e_high, size=n_intervals)
    # inhibition = excitation + difference, U[max(0, E + d_low), E + d_high): never below zero
    # (where a configured range puts E + d_high below zero too, inhibition is simply 0)
    low = np.maximum(0.0, excitation + d_low)
    inhibition = rng.uniform(low, np.maximum(low, excitation + d_high))
    return excitation, inhibition


def _check_segments(length_um: np.ndarray, is_basal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    length_um = np.asarray(length_um, dtype=np.float64)
    is_basal = np.asarray(is_basal, dtype=bool)
    if length_um.ndim != 1 or is_basal.shape != length_um.shape:
        raise InputShapeError(
            f"segment lengths {length_um.shape} and is_basal {is_basal.shape} must be two 1-D arrays of the same length"
        )
    if not is_basal.any() or is_basal.all():
        raise InputShapeError("the cell needs both basal and apical segments to draw NeuronIO inputs")
    return length_um, is_basal


# --------------------------------------------------------------------------- the generator

# How step 10 is computed: "held" (smooth_held_rates, the default) or "fft" (smooth_rates over the expanded
# rates, the spec's own form); the same rates up to round-off, the same rasters (bench/input_drawing.py times both)
SMOOTHINGS = ("held", "fft")


def draw_rates(
    config: InputConfig, length_um: np.ndarray, is_basal: np.ndarray, rng: np.random.Generator,
    smoothing: str = "held",
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Smoothed expected spikes per 1-ms bin, (n_segments, T) excitatory and inhibitory (spec 5 steps 1-10).

    Also returns the drawn timescales {"rate_change_interval_ms", "smoothing_sigma_ms"}.
    """
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {SMOOTHINGS}, not {smoothing!r}")
    length_um, is_basal = _check_segments(length_um, is_basal)
    duration = config.duration_ms

    # steps 1-3: how long each coarse rate is held, how much it is smoothed
    interval = config.rate_change_interval_ms[rng.integers(len(config.rate_change_interval_ms))]
    interval += draw_jitter(rng, config.jitter_range_ms)
    sigma = config.smoothing_sigma_ms[rng.integers(len(config.smoothing_sigma_ms))]
    sigma += draw_jitter(rng, config.jitter_range_ms)
    n_intervals = math.ceil(duration / interval)

    # step 4: basal counts, then apical counts
    basal_excitation, basal_inhibition = _tree_counts(rng, config, n_intervals)
    apical_excitation, apical_inhibition = _tree_counts(rng, config, n_intervals)

    # step 5: spikes per um per ms, with regularised lengths so short segments do not dominate
    regularised_length = length_um + config.min_segment_length_um
    basal_total = regularised_length[is_basal].sum()
    apical_total = regularised_length[~is_basal].sum()

    def per_segment(basal_counts, apical_counts):
        # step 6: every segment of a tree gets its tree's per-um rate
        rate = np.where(is_basal[:, None], basal_counts / (100.0 * basal_total), apical_counts / (100.0 * apical_total))
        return rate

    excitation = per_segment(basal_excitation, apical_excitation)
    inhibition = per_segment(basal_inhibition, apical_inhibition)

    # step 7: spatial multiplicative noise, whole excitatory matrix first
    noise_low, noise_high = config.spatial_noise_range
    excitation = excitation * rng.uniform(noise_low, noise_high, size=excitation.shape)
    inhibition = inhibition * rng.uniform(noise_low, noise_high, size=inhibition.shape)

    # step 8: expected spikes per ms on a segment grow with its (regularised) length
    excitation *= regularised_length[:, None]
    inhibition *= regularised_length[:, None]

    # steps 9-10: hold each coarse value for `interval` ms, crop, smooth
    if smoothing == "held":  # both matrices in one pass: they share the pieces and the window
        both = smooth_held_rates(np.concatenate([excitation, inhibition]), interval, duration, sigma)
        excitation, inhibition = both[:len(length_um)], both[len(length_um):]
    else:
        excitation = smooth_rates(np.repeat(excitation, interval, axis=1)[:, :duration], sigma)
        inhibition = smooth_rates(np.repeat(inhibition, interval, axis=1)[:, :duration], sigma)
    return excitation, inhibition, {"rate_change_interval_ms": int(interval), "smoothing_sigma_ms": int(sigma)}


def sample_spikes(rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Doubly stochastic sampling (spec 5 step 11): p ~ Exponential(mean = rate), spike iff U < p."""
    probability = rng.standard_exponential(rate.shape)
    probability *= rate  # the same numbers as rng.exponential(rate), one temporary less
    return rng.random(rate.shape) < probability


def generate_input_spikes(
    config: InputConfig, length_um: np.ndarray, is_basal: np.ndarray, rng: np.random.Generator,
    smoothing: str = "held",
) -> np.ndarray:
    """One simulation's input raster, (2 n_segments, duration_ms) bool.

    Row k < n_segments is the excitatory synapse on segment k, row n_segments + k the
    inhibitory one. `length_um` and `is_basal` follow the segment table (NeuronIO order).
    `smoothing`: one of SMOOTHINGS (the same raster either way).
    """
    excitation, inhibition, _ = draw_rates(config, length_um, is_basal, rng, smoothing)
    excitatory_spikes = sample_spikes(excitation, rng)
    inhibitory_spikes = sample_spikes(inhibition, rng)
    return np.concatenate([excitatory_spikes, inhibitory_spikes], axis=0)
