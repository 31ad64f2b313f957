"""The soma target of spec 7.2 and its inverse: the one place the soma voltage is scaled.

Models output, per ms, (spike logit, scaled soma voltage). The scaled soma target is

    target = (min(V, voltage_cap_mV) - voltage_bias_mV) * voltage_scale

(spec 7.2 and the published models: cap -55 mV, bias -67.7 mV, scale 0.1; the [data] keys of
the same names), and an output decodes back to millivolts as output / scale + bias. A model
is only right in millivolts with the transform it was trained with, so that transform is
stored in its checkpoint (surrogate.checkpoints) and decoding always takes it from there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class SomaTransform:
    """target = (min(V, voltage_cap_mV) - voltage_bias_mV) * voltage_scale; V = output / voltage_scale + voltage_bias_mV."""

    voltage_cap_mV: float = -55.0
    voltage_bias_mV: float = -67.7
    voltage_scale: float = 0.1

    def __post_init__(self):
        values = dataclasses.astuple(self)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"the soma transform needs finite numbers, got {self.as_dict()}")
        if self.voltage_scale <= 0:
            raise ValueError(f"voltage_scale must be positive, got {self.voltage_scale}")

    @classmethod
    def of(cls, config: Any) -> "SomaTransform":
        """The transform of anything holding the three fields: a surrogate.config.DataConfig."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SomaTransform":
        """From as_dict()'s form (a checkpoint's "soma_transform"); missing or extra keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, Mapping) or set(values) != names:
            raise ValueError(f"a soma transform has exactly the keys {', '.join(sorted(names))}, got {values!r}")
        return cls(**{k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in values.items()})

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def encode(self, soma_voltage_mV: np.ndarray) -> np.ndarray:
        """Soma voltage (mV) -> the training target, float32."""
        clipped = np.minimum(np.asarray(soma_voltage_mV, dtype=np.float32), np.float32(self.voltage_cap_mV))
        return ((clipped - np.float32(self.voltage_bias_mV)) * np.float32(self.voltage_scale)).astype(np.float32)

    def decode(self, scaled_voltage: torch.Tensor) -> torch.Tensor:
        """A model's soma channel -> soma voltage in mV (float32)."""
        return scaled_voltage.float() / self.voltage_scale + self.voltage_bias_mV


PUBLISHED_SOMA_TRANSFORM = SomaTransform()  # spec 7.2; the published elmneuron models were trained with it
