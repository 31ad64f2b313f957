"""The temporal convolutional network (TCN) of Beniaguev, Segev & London (Neuron 2021).

A stack of causal 1-D convolutions over time, each followed by the activation and batch
normalisation (their order), then a 1x1 convolution to the two outputs. The network sees
the raw 0/1 input raster; excitation and inhibition are told apart by channel.
The published L5PC network (NMDA_TCN__DWT_7_128_153) has 7 layers of 128 filters, a first
kernel of 45 ms and 19 ms kernels after it: a receptive field of 44 + 6 * 18 + 1 = 153 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SPIKE_BIAS_INIT = -2.0  # the published spike head starts at sigmoid(-2): spikes are rare

# weight_init = "published": the initial weights of Beniaguev et al.'s training code (Keras): every
# convolution kernel from a normal of std 0.002 truncated at 2 std, zero biases, the spike head's
# kernel std 0.001 and the soma head's 0.03. With batch norm after each ReLU a layer's output does
# not depend on its kernel's scale, so the scale sets how far each Adam step moves a layer: from
# 0.002 layers 2-7 move about 6x further, relative to their weights, than from PyTorch's default
# (std 1 / sqrt(3 fan_in) = 0.012 for 128 x 19 inputs).
PUBLISHED_KERNEL_STD = 0.002
PUBLISHED_HEAD_STD = (0.001, 0.03)  # spike, soma
WEIGHT_INITS = ("pytorch", "published")


@dataclass(frozen=True)
class TCNConfig:
    """[tcn]: depth x width and kernel sizes (defaults: the published 7 x 128 x 153 network)."""

    num_input: int = 1278
    num_output: int = 2
    depth: int = 7  # convolutional layers
    width: int = 128  # filters per layer
    first_kernel_size: int = 45  # ms, layer 1
    kernel_size: int = 19  # ms, layers 2..depth
    dilation: int = 1
    batch_norm: bool = True
    activation: str = "relu"  # "relu" or "silu"
    dropout: float = 0.0
    # how many leading layers run as one matrix product over the channels plus a shifted sum over the
    # kernel taps instead of a cuDNN/oneDNN convolution: the same function, a different kernel (the
    # first layer's 1278 input channels are 80 % of the network's arithmetic and run faster as a GEMM)
    matmul_layers: int = 0
    # initial bias of the spike logit: the published -2 (sigmoid 0.12); a short training run
    # starts better near the logit of the firing rate (1 Hz: about -7), which Adam would
    # otherwise take thousands of steps to reach
    spike_bias_init: float = SPIKE_BIAS_INIT
    weight_init: str = "pytorch"  # or "published" (above)

    def __post_init__(self):
        if self.depth < 1 or self.width < 1 or self.num_input < 1 or self.num_output < 1:
            raise ValueError("depth, width, num_input and num_output must be positive")
        if self.first_kernel_size < 1 or self.kernel_size < 1 or self.dilation < 1:
            raise ValueError("kernel sizes and dilation must be >= 1")
        if self.activation not in ("relu", "silu"):
            raise ValueError(f"activation must be 'relu' or 'silu', got {self.activation!r}")
        if not 0 <= self.matmul_layers <= self.depth:
            raise ValueError(f"matmul_layers must be in 0..depth ({self.depth}), got {self.matmul_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {self.weight_init!r}")
        if not -30.0 <= self.spike_bias_init <= 30.0:
            raise ValueError(f"spike_bias_init must be a logit in [-30, 30], got {self.spike_bias_init}")

    @property
    def kernel_sizes(self) -> list[int]:
        return [self.first_kernel_size] + [self.kernel_size] * (self.depth - 1)

    @property
    def receptive_field_ms(self) -> int:
        return 1 + sum((k - 1) * self.dilation for k in self.kernel_sizes)


def published_tcn_config() -> TCNConfig:
    """Beniaguev et al. 2021's best L5PC (NMDA) network: 7 layers x 128 filters, 153 ms."""
    return TCNConfig(depth=7, width=128, first_kernel_size=45, kernel_size=19, dilation=1)


class CausalConv1d(nn.Conv1d):
    """Conv1d over (B, C, T) padded on the left only, so output t sees inputs <= t.

    y[:, :, t] = bias + sum_k W[:, :, k] x[:, :, t + k d - (K - 1) d]. With `as_matmul` the same sum
    is formed as every tap's product at once, one (B T, C) x (C, K out) matrix product, then the K
    products added along a diagonal of time and tap: what a wide first layer needs to reach a GPU's
    matrix units (the weights, and so checkpoints, are those of the convolution).
    """

    def __init__(self, *args, as_matmul: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.as_matmul = as_matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = (self.kernel_size[0] - 1) * self.dilation[0]
        if self.as_matmul:
            return self._forward_as_matmul(x, left)
        return super().forward(F.pad(x, (left, 0)))

    def _forward_as_matmul(self, x: torch.Tensor, left: int) -> torch.Tensor:
        batch, _, steps = x.shape
        taps, width, dilation = self.kernel_size[0], self.out_channels, self.dilation[0]
        weight = self.weight.permute(1, 2, 0).reshape(self.in_channels, taps * width)  # [c, k * out + o]
        # (B, T + left, K out): products[b, s, k * out + o] = sum_c W[o, c, k] x_padded[b, c, s]
        products = (F.pad(x.transpose(1, 2), (0, 0, left, 0)) @ weight).contiguous()
        # the diagonal view diagonal[b, t, k, o] = products[b, t + k d, k * out + o], summed over k
        row = taps * width
        diagonal = products.as_strided(
            (batch, steps, taps, width), (products.stride(0), row, dilation * row + width, 1), products.storage_offset()
        )
        y = diagonal.sum(dim=2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.transpose(1, 2)


class TCNLayer(nn.Module):
    """causal conv -> activation -> batch norm (-> dropout), as the published network."""

    def __init__(self, in_channels: int, config: TCNConfig, kernel_size: int, as_matmul: bool = False):
        super().__init__()
        self.conv = CausalConv1d(in_channels, config.width, kernel_size, dilation=config.dilation, as_matmul=as_matmul)
        self.activation = nn.ReLU() if config.activation == "relu" else nn.SiLU()
        self.norm = nn.BatchNorm1d(config.width) if config.batch_norm else nn.Identity()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.activation(self.conv(x))))


class TCN(nn.Module):
    """(B, T, 1278) 0/1 input spikes -> (B, T, 2): spike logit, (V + 67.7) * 0.1.

    Causal in eval mode (batch norm then uses its running statistics; in training mode it
    normalises with statistics over the whole batch window, as any batch-normalised TCN).
    """

    def __init__(self, config: TCNConfig):
        super().__init__()
        self.config = config
        channels = [config.num_input] + [config.width] * config.depth
        self.layers = nn.ModuleList(
            TCNLayer(channels[i], config, k, as_matmul=i < config.matmul_layers)
            for i, k in enumerate(config.kernel_sizes)
        )
        self.head = nn.Conv1d(config.width, config.num_output, kernel_size=1)
        with torch.no_grad():
            if config.weight_init == "published":
                self._published_init()
            self.head.bias[0] = config.spike_bias_init

    def _published_init(self) -> None:
        def truncated_normal(weight: torch.Tensor, std: float) -> None:
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)

        for layer in self.layers:
            truncated_normal(layer.conv.weight, PUBLISHED_KERNEL_STD)
            nn.init.zeros_(layer.conv.bias)
        nn.init.zeros_(self.head.bias)
        for row, std in zip(self.head.weight, PUBLISHED_HEAD_STD):  # further outputs keep PyTorch's draw
            truncated_normal(row, std)

    def forward(self, input_spikes: torch.Tensor) -> torch.Tensor:
        x = input_spikes.to(self.head.weight.dtype).transpose(1, 2)  # (B, channels, T)
        for layer in self.layers:
            x = layer(x)
        return self.head(x).transpose(1, 2)
