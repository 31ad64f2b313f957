"""Run a surrogate on whole simulations: spike probability and soma voltage (mV).

Models output (spike logit, scaled soma voltage) per ms (spec 7.2); here the logit goes
through a sigmoid and the voltage is decoded to mV with the model's own soma transform
(surrogate.targets: the one stored in its checkpoint). Two ways to cover a long simulation:
- `predict_whole`: one causal pass over all T steps (the natural use of a causal model);
- `predict_windowed`: the [ELM] evaluation protocol (spec 7.3), overlapping 500 ms windows
  with a 150 ms burn-in, each window started from rest.
Inputs are (n, 1278, T) bool arrays (numpy, or an h5py dataset sliced per batch).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from simulation.errors import InputShapeError

from .targets import SomaTransform


def outputs_to_predictions(output: torch.Tensor, transform: SomaTransform) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2) model output -> (spike probability, soma voltage in mV)."""
    return torch.sigmoid(output[..., 0].float()), transform.decode(output[..., 1])


def _as_model_input(input_spikes: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, 1278, T) bool numpy -> (n, T, 1278) float32 on device (moved as bytes, cast there)."""
    spikes = torch.from_numpy(np.ascontiguousarray(input_spikes, dtype=np.uint8)).to(device)
    return spikes.transpose(1, 2).float()


def flush_denormals() -> None:
    """Treat subnormal floats as zero on CPU (x86 FTZ/DAZ, process-wide).

    SiLU of a very negative pre-activation yields subnormals inside the ELM recurrence, which
    slow the CPU loop about 30-fold; at ~1e-38 they change no prediction.
    """
    torch.set_flush_denormal(True)


class _EvalMode:
    """Put a model in eval mode for the duration, then restore its previous mode."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _check_input(model: nn.Module, input_spikes) -> tuple[int, int]:
    if len(input_spikes.shape) != 3:
        raise InputShapeError(f"input_spikes must be (n, inputs, T), got shape {tuple(input_spikes.shape)}")
    n, num_input, steps = input_spikes.shape
    expected = getattr(getattr(model, "config", None), "num_input", num_input)
    if num_input != expected:
        raise InputShapeError(f"input_spikes has {num_input} inputs per step, the model expects {expected}")
    return n, steps


@torch.inference_mode()
def predict_whole(
    model: nn.Module,
    input_spikes,
    transform: SomaTransform,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One causal pass over each whole simulation -> (spike_probability, soma_voltage_mV), (n, T) float32.

    `transform` decodes the soma channel: the model's own (load_model's info["soma_transform"]).
    progress(k) is called with the number of simulations finished after each batch.
    """
    device = torch.device(device)
    n, steps = _check_input(model, input_spikes)
    flush_denormals()
    spike_probability = np.empty((n, steps), dtype=np.float32)
    soma_voltage = np.empty((n, steps), dtype=np.float32)
    with _EvalMode(model):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            output = model(_as_model_input(np.asarray(input_spikes[start:stop]), device))
            probability, voltage = outputs_to_predictions(output, transform)
            spike_probability[start:stop] = probability.cpu().numpy()
            soma_voltage[start:stop] = voltage.cpu().numpy()
            if progress is not None:
                progress(stop - start)
    return spike_probability, soma_voltage


def window_starts(steps: int, window_ms: int = 500, burn_in_ms: int = 150) -> list[int]:
    """Start times of the evaluation windows (spec 7.3): stride window - burn-in, until T is covered.

    6000 ms with 500/150 gives 17 windows, starts 0, 350, ..., 5600 (= int(2 + 5500 / 350)).
    """
    if not 0 <= burn_in_ms < window_ms:
        raise ValueError(f"need 0 <= burn_in_ms < window_ms, got {burn_in_ms}, {window_ms}")
    stride = window_ms - burn_in_ms
    starts = [0]
    while starts[-1] + window_ms < steps:
        starts.append(starts[-1] + stride)
    return starts


@torch.inference_mode()
def predict_windowed(
    model: nn.Module,
    input_spikes,
    transform: SomaTransform,
    window_ms: int = 500,
    burn_in_ms: int = 150,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    simulations_per_read: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """The [ELM] test-time protocol (spec 7.3) -> (spike_probability, soma_voltage_mV), (n, T) float32.

    Each window of `window_ms` runs from rest; the first fills [0, window), each later one
    fills [start + burn_in, start + window). Inputs past T are zeros. `transform` decodes the
    soma channel (the model's own, as predict_whole). batch_size counts
    windows per forward pass; progress(k) reports finished simulations.
    """
    device = torch.device(device)
    n, steps = _check_input(model, input_spikes)
    starts = window_starts(steps, window_ms, burn_in_ms)
    flush_denormals()
    padded_steps = starts[-1] + window_ms
    spike_probability = np.empty((n, steps), dtype=np.float32)
    soma_voltage = np.empty((n, steps), dtype=np.float32)
    with _EvalMode(model):
        for first in range(0, n, simulations_per_read):
            last = min(first + simulations_per_read, n)
            block = np.zeros((last - first, input_spikes.shape[1], padded_steps), dtype=bool)
            block[:, :, :steps] = np.asarray(input_spikes[first:last])
            # every (simulation, window) pair of this block, cut into batches of windows
            pairs = [(i, s) for i in range(last - first) for s in starts]
            for k in range(0, len(pairs), batch_size):
                batch = pairs[k:k + batch_size]
                windows = np.stack([block[i, :, s:s + window_ms] for i, s in batch])
                probability, voltage = outputs_to_predictions(model(_as_model_input(windows, device)), transform)
                probability, voltage = probability.cpu().numpy(), voltage.cpu().numpy()
                for j, (i, s) in enumerate(batch):
                    keep_from = 0 if s == 0 else burn_in_ms  # the first window has no burn-in
                    lo, hi = s + keep_from, min(s + window_ms, steps)
                    if hi > lo:
                        spike_probability[first + i, lo:hi] = probability[j, keep_from:hi - s]
                        soma_voltage[first + i, lo:hi] = voltage[j, keep_from:hi - s]
            if progress is not None:
                progress(last - first)
    return spike_probability, soma_voltage
