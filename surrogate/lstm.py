"""An LSTM baseline: stacked LSTM layers over the raw input raster, then a linear readout.

The ELM paper (Spieler et al., ICLR 2024) compares its neurons on NeuronIO with an LSTM
(cuDNN) of about 858k parameters (reported test AUC 0.9925). One LSTM layer of 150 units
over the 1278 inputs has 4 * 150 * (1278 + 150 + 2) = 858,000 parameters (PyTorch's two
bias vectors), 858,302 with the readout: those are the defaults below. (The paper's text
available here gives the parameter count, not the layout; the layout is inferred from it.)

The network sees the 0/1 input spikes as they are and is causal by construction. On CUDA
nn.LSTM runs cuDNN's kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class LSTMConfig:
    """[lstm]: layers and units (defaults: 1 x 150, the ELM paper's 858k-parameter baseline)."""

    num_input: int = 1278
    num_output: int = 2
    hidden_size: int = 150  # units per layer
    num_layers: int = 1
    dropout: float = 0.0  # between LSTM layers (needs num_layers > 1)
    # Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"):
    # forget-gate biases log(u), u ~ U(1, chrono_max_steps - 1), input-gate biases -log(u), so the
    # units start with memory spans spread up to chrono_max_steps steps. 0: PyTorch's default init.
    chrono_max_steps: float = 0.0
    # initial bias of the spike logit; None keeps PyTorch's default. Near the logit of the firing
    # rate (1 Hz: about -7) a short training run does not spend its steps pushing it down.
    spike_bias_init: float | None = None

    def __post_init__(self):
        if self.num_input < 1 or self.num_output < 1 or self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("num_input, num_output, hidden_size and num_layers must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout > 0 and self.num_layers == 1:
            raise ValueError("dropout acts between LSTM layers: it needs num_layers > 1")
        if self.spike_bias_init is not None and not -30.0 <= self.spike_bias_init <= 30.0:
            raise ValueError(f"spike_bias_init must be a logit in [-30, 30], got {self.spike_bias_init}")
        if self.chrono_max_steps != 0 and self.chrono_max_steps <= 2:
            raise ValueError(f"chrono_max_steps must be 0 (off) or > 2, got {self.chrono_max_steps}")


class LSTM(nn.Module):
    """(B, T, 1278) 0/1 input spikes -> (B, T, 2): spike logit, scaled soma voltage (surrogate.targets)."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(config.num_input, config.hidden_size, num_layers=config.num_layers,
                            dropout=config.dropout, batch_first=True)
        self.head = nn.Linear(config.hidden_size, config.num_output)
        if config.spike_bias_init is not None:
            with torch.no_grad():
                self.head.bias[0] = config.spike_bias_init
        if config.chrono_max_steps:
            self._chrono_init(config.chrono_max_steps)

    @torch.no_grad()
    def _chrono_init(self, max_steps: float) -> None:
        """b_f = log(u), b_i = -log(u), u ~ U(1, max_steps - 1) (Tallec & Ollivier 2018); gate order i, f, g, o."""
        h = self.config.hidden_size
        for layer in range(self.config.num_layers):
            log_u = torch.log(torch.empty(h).uniform_(1.0, max_steps - 1.0))
            bias_ih, bias_hh = getattr(self.lstm, f"bias_ih_l{layer}"), getattr(self.lstm, f"bias_hh_l{layer}")
            bias_ih[:h], bias_hh[:h] = -log_u, 0.0  # input gate
            bias_ih[h:2 * h], bias_hh[h:2 * h] = log_u, 0.0  # forget gate

    def forward(self, input_spikes: torch.Tensor) -> torch.Tensor:
        x = input_spikes.to(self.head.weight.dtype)
        hidden, _ = self.lstm(x)  # zero initial state: every window starts from rest, as the ELM's memory
        return self.head(hidden)
