"""The Expressive Leaky Memory (ELM) neuron and its Branch-ELM variant.

Spieler, Rahaman, Martius, Schölkopf & Levina (ICLR 2024), ELM v1. With input x_t (1278
values at 1 ms steps: +1 for an excitatory spike, -1 for an inhibitory one):

    s_t = kappa_s * s_{t-1} + w_s * x_t            synaptic traces, w_s = relu(proto_w_s)
    b_t = sum of s_t over the synapses of a branch  (plain ELM: one synapse per "branch")
    h_t = act(W_hb b_t + c_h + W_hm (kappa_m * m_{t-1}))
    z_t = W_zh h_t + b_z
    m_t = kappa_m * m_{t-1} + lambda * (1 - kappa_m) * 1.7159 * tanh(2/3 * z_t)
    y_t = W_y m_t + b_y                             (spike logit, scaled soma voltage)

kappa_s = exp(-dt/tau_s), kappa_m = exp(-dt/tau_m), tau_m = tau_min + (tau_max - tau_min)
* sigmoid(proto_tau_m); s_0 = 0, m_0 = 0.

Everything up to the drive W_hb b_t + c_h is linear in the input, so it is computed for all
time steps at once (an exact chunked exponential filter); only the memory update is a
recurrence: `memory_dynamics` below is one step of it (h_t, z_t, m_t), and
`memory_recurrence` runs it over time, step by step in PyTorch, or as the fused Triton
kernel of surrogate/kernels/fused.py, an accelerated implementation of the same steps for
CUDA. Which one runs is the `recurrence` argument of `ELM.forward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_SEGMENTS = 639  # NeuronIO: rows 0..638 excitatory, 639..1277 inhibitory (spec 7.1)
SYNAPSE_WEIGHT_INIT = 0.5  # initial proto_w_s of every synapse, as the published code
TAU_EPSILON = 1e-6  # keeps the initial memory time constants strictly inside (tau_min, tau_max)
# LeCun's scaled tanh, as in the ELM paper: 1.7159 * tanh(2/3 * z)
SCALED_TANH_GAIN = 1.7159
SCALED_TANH_SLOPE = 2.0 / 3.0
RECURRENCES = ("auto", "reference", "fused")  # ELM.forward's `recurrence` choices


@dataclass(frozen=True)
class ELMConfig:
    """[elm] / [branch_elm]: the ELM's sizes and time constants (defaults: the paper's Branch-ELM)."""

    num_input: int = 2 * NUM_SEGMENTS
    num_output: int = 2
    num_memory: int = 20  # d_m
    mlp_hidden: int = 0  # 0 -> 2 * num_memory, as the paper
    mlp_activation: str = "relu"  # "relu" or "silu"
    memory_tau_min: float = 1.0  # ms
    memory_tau_max: float = 150.0  # ms
    learn_memory_tau: bool = False
    lambda_value: float = 5.0  # memory update gain
    synapse_tau_ms: float = 5.0
    num_branch: int = 0  # 0: plain ELM (one synapse per input); NeuronIO Branch-ELM: 45
    num_synapse_per_branch: int = 100
    dt_ms: float = 1.0
    # initial bias of the spike logit (readout unit 0); None keeps PyTorch's default (the published
    # ELM's). A short training run starts better near the logit of the firing rate (1 Hz: about -7).
    spike_bias_init: float | None = None

    def __post_init__(self):
        if self.num_input < 1 or self.num_output < 1 or self.num_memory < 1:
            raise ValueError("num_input, num_output and num_memory must be positive")
        if self.mlp_hidden < 0:
            raise ValueError(f"mlp_hidden must be >= 0 (0 means 2 * num_memory), got {self.mlp_hidden}")
        if self.mlp_activation not in ("relu", "silu"):
            raise ValueError(f"mlp_activation must be 'relu' or 'silu', got {self.mlp_activation!r}")
        if not 0.0 < self.memory_tau_min < self.memory_tau_max:
            raise ValueError(f"need 0 < memory_tau_min < memory_tau_max, got {self.memory_tau_min}, {self.memory_tau_max}")
        if self.synapse_tau_ms <= 0 or self.dt_ms <= 0:
            raise ValueError("synapse_tau_ms and dt_ms must be positive")
        if self.num_branch < 0 or self.num_synapse_per_branch < 1:
            raise ValueError("num_branch must be >= 0 and num_synapse_per_branch >= 1")
        if self.spike_bias_init is not None and not -30.0 <= self.spike_bias_init <= 30.0:
            raise ValueError(f"spike_bias_init must be a logit in [-30, 30], got {self.spike_bias_init}")
        if self.num_branch > 0 and math.ceil(self.num_input / self.num_branch) > self.num_synapse_per_branch:
            raise ValueError(
                f"{self.num_branch} branches of {self.num_synapse_per_branch} synapses cannot cover "
                f"{self.num_input} inputs (need num_synapse_per_branch >= ceil(num_input / num_branch))"
            )

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden or 2 * self.num_memory

    @property
    def num_synapse(self) -> int:
        return self.num_branch * self.num_synapse_per_branch if self.num_branch else self.num_input


def neuronio_routing(num_input: int, num_branch: int, num_synapse_per_branch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which input each Branch-ELM synapse reads (spec 7.1, [ELM]'s "neuronio_routing").

    Inputs are interleaved (ex 0, inh 0, ex 1, inh 1, ...) so that neighbouring entries lie on
    the same dendritic segment; branch b takes num_synapse_per_branch consecutive interleaved
    entries starting at b * ceil(num_input / num_branch). Branches overlap; entries past the
    end are clamped to the last input and masked out.
    Returns (input_to_synapse_indices int64, valid_mask bool), each num_branch * num_synapse_per_branch long.
    """
    half = num_input // 2
    k = torch.arange(num_input)
    interleaved = (k % 2) * half + k // 2  # position k -> input row
    stride = math.ceil(num_input / num_branch)
    position = torch.arange(num_branch)[:, None] * stride + torch.arange(num_synapse_per_branch)[None, :]
    valid_mask = position < num_input
    position = position.clamp(max=num_input - 1)
    return interleaved[position].flatten(), valid_mask.flatten()


def exponential_filter(a: torch.Tensor, kappa: float, chunk: int = 64) -> torch.Tensor:
    """Causal filter out_t = kappa * out_{t-1} + a_t (out_0 = a_0) along dim 1 of a (B, T, C).

    Exact in fp32 and parallel over time: within a chunk of `chunk` steps, out = L @ a with
    the lower-triangular L[i, j] = kappa^(i - j) (one matrix product for all chunks); the
    state carried between chunks is a short loop over T / chunk steps. (The closed form
    kappa^t * cumsum(kappa^-t a) would overflow.)
    """
    batch, steps, channels = a.shape
    chunk = min(chunk, steps)
    n_chunks = -(-steps // chunk)
    padded = torch.nn.functional.pad(a, (0, 0, 0, n_chunks * chunk - steps)).view(batch, n_chunks, chunk, channels)
    lag = torch.arange(chunk, dtype=torch.float64, device=a.device)
    diff = lag[:, None] - lag[None, :]
    # kappa^(i - j) for j <= i, 0 above the diagonal (powers in float64, then rounded once)
    toeplitz = torch.where(diff >= 0, kappa ** diff.clamp(min=0), torch.zeros_like(diff)).to(a.dtype)
    # each chunk filtered from a zero start: (chunk, chunk) @ (chunk, B * n_chunks * C)
    columns = padded.permute(2, 0, 1, 3).reshape(chunk, -1)
    within = (toeplitz @ columns).view(chunk, batch, n_chunks, channels).permute(1, 2, 0, 3)
    # the state at the end of each chunk, carried forward: a short loop on (B, C) tensors
    chunk_ends = within[:, :, -1].unbind(dim=1)  # unbind: one gradient stack in backward, not one per chunk
    ends = [chunk_ends[0]]
    for c in range(1, n_chunks):
        ends.append(chunk_ends[c] + kappa**chunk * ends[-1])
    # previous chunk's end state, decaying as kappa^(i + 1) in row i of the next chunk
    carried = torch.stack([torch.zeros_like(ends[0])] + ends[:-1], dim=1)  # (B, n_chunks, C)
    decay = (kappa ** (lag + 1)).to(a.dtype)[:, None]  # (chunk, 1)
    out = within + decay * carried[:, :, None, :]
    return out.reshape(batch, -1, channels)[:, :steps]


def activation_fn(name: str):
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    raise ValueError(f"unknown MLP activation {name!r} (expected 'relu' or 'silu')")


def memory_dynamics(memory: torch.Tensor, drive_t: torch.Tensor, kappa_m: torch.Tensor, w_hm: torch.Tensor,
                    w_zh: torch.Tensor, b_z: torch.Tensor, update_gain: torch.Tensor, act) -> torch.Tensor:
    """One step of the ELM memory, m_{t-1} -> m_t (B, d_m), given drive_t = W_hb b_t + c_h (B, H).

    update_gain = lambda * (1 - kappa_m) * 1.7159, the same for every step.
    """
    decayed = kappa_m * memory  # kappa_m * m_{t-1}
    hidden = act(drive_t + decayed @ w_hm.T)  # h_t = act(W_hb b_t + c_h + W_hm (kappa_m * m_{t-1}))
    z = hidden @ w_zh.T + b_z  # z_t = W_zh h_t + b_z
    return decayed + update_gain * torch.tanh(SCALED_TANH_SLOPE * z)  # m_t


def memory_recurrence(drive: torch.Tensor, kappa_m: torch.Tensor, w_hm: torch.Tensor, w_zh: torch.Tensor,
                      b_z: torch.Tensor, lambda_value: float, activation: str = "relu",
                      implementation: str = "auto") -> torch.Tensor:
    """Memory states m_1..m_T (B, T, d_m) from m_0 = 0: `memory_dynamics` at every step of drive (B, T, H).

    implementation: "reference" steps through time in PyTorch (the definition, and the CPU
    path); "fused" runs the same steps in the fused Triton kernels (surrogate/kernels/fused.py;
    CUDA tensors, fp32); "auto" takes "fused" for CUDA tensors when Triton is installed,
    else "reference".
    """
    if implementation not in RECURRENCES:
        raise ValueError(f"implementation must be one of {', '.join(RECURRENCES)}, got {implementation!r}")
    if implementation == "fused" or (implementation == "auto" and drive.is_cuda):
        try:
            from surrogate.kernels.fused import memory_recurrence_fused
        except ImportError:  # no Triton here
            if implementation == "fused":
                raise
        else:
            return memory_recurrence_fused(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation)
    act = activation_fn(activation)
    update_gain = lambda_value * (1.0 - kappa_m) * SCALED_TANH_GAIN
    memory = drive.new_zeros(drive.shape[0], w_zh.shape[0])  # m_0 = 0
    states = []
    # unbind, not drive[:, t]: the backward of T selects would zero and add a full (B, T, H) gradient at
    # every step (O(T^2) memory traffic, 95 % of a CPU step at T = 1024); unbind's backward stacks once
    for drive_t in drive.unbind(dim=1):
        memory = memory_dynamics(memory, drive_t, kappa_m, w_hm, w_zh, b_z, update_gain, act)
        states.append(memory)
    return torch.stack(states, dim=1)


class ELM(nn.Module):
    """ELM (num_branch 0) or Branch-ELM (routing through branches): (B, T, 1278) -> (B, T, 2)."""

    def __init__(self, config: ELMConfig, routing: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        d_m, hidden = config.num_memory, config.hidden_size
        num_branch = config.num_branch or config.num_input

        # synapse type: +1 excitatory (first half of the inputs), -1 inhibitory (spec 7.1)
        half = config.num_input // 2
        synapse_type = torch.ones(config.num_input)
        synapse_type[half:] = -1.0
        self.register_buffer("synapse_type", synapse_type, persistent=False)

        # Branch-ELM routing (kept in the state dict, so a checkpoint carries its own wiring)
        if config.num_branch:
            if routing is None:
                routing = neuronio_routing(config.num_input, config.num_branch, config.num_synapse_per_branch)
            indices, valid = routing
            if indices.shape != (config.num_synapse,) or valid.shape != (config.num_synapse,):
                raise ValueError(f"routing must hold {config.num_synapse} synapses, got {tuple(indices.shape)}")
            self.register_buffer("input_to_synapse_indices", indices.long().clone())
            self.register_buffer("valid_indices_mask", valid.bool().clone())
            branch_of_synapse = torch.arange(config.num_branch).repeat_interleave(config.num_synapse_per_branch)
            self.register_buffer("branch_of_synapse", branch_of_synapse, persistent=False)
        elif routing is not None:
            raise ValueError("routing is only used by a Branch-ELM (num_branch > 0)")

        # synaptic weights w_s = relu(proto_w_s); synaptic time constant fixed (config)
        self.proto_w_s = nn.Parameter(torch.full((config.num_synapse,), SYNAPSE_WEIGHT_INIT))

        # memory time constants, log-spaced over [tau_min, tau_max] at initialisation
        tau_m = torch.logspace(
            math.log10(config.memory_tau_min + TAU_EPSILON), math.log10(config.memory_tau_max - TAU_EPSILON), d_m
        ).clamp(config.memory_tau_min + TAU_EPSILON, config.memory_tau_max - TAU_EPSILON)
        proto_tau_m = torch.log((tau_m - config.memory_tau_min) / (config.memory_tau_max - tau_m))
        if config.learn_memory_tau:
            self.proto_tau_m = nn.Parameter(proto_tau_m)
        else:  # a buffer, so it is not counted among the trainable parameters (as published)
            self.register_buffer("proto_tau_m", proto_tau_m)

        # the MLP over [b_t, kappa_m * m_{t-1}], its first layer split into its two inputs
        self.w_hb = nn.Linear(num_branch, hidden)  # W_hb, c_h
        self.w_hm = nn.Linear(d_m, hidden, bias=False)  # W_hm
        self.w_zh = nn.Linear(hidden, d_m)  # W_zh, b_z
        self.w_y = nn.Linear(d_m, config.num_output)  # readout
        self._reset_mlp_like_one_linear(num_branch + d_m)
        if config.spike_bias_init is not None:
            with torch.no_grad():
                self.w_y.bias[0] = config.spike_bias_init

    def _reset_mlp_like_one_linear(self, fan_in: int) -> None:
        # The paper's first MLP layer is one Linear over [b, m]: initialise both halves with its fan-in.
        bound = 1.0 / math.sqrt(fan_in)
        for weight in (self.w_hb.weight, self.w_hm.weight, self.w_hb.bias):
            nn.init.uniform_(weight, -bound, bound)

    # ------------------------------------------------------------------ derived quantities
    @property
    def w_s(self) -> torch.Tensor:
        return torch.relu(self.proto_w_s)

    @property
    def tau_m(self) -> torch.Tensor:
        c = self.config
        return c.memory_tau_min + (c.memory_tau_max - c.memory_tau_min) * torch.sigmoid(self.proto_tau_m)

    @property
    def kappa_m(self) -> torch.Tensor:
        return torch.exp(-self.config.dt_ms / self.tau_m)

    @property
    def kappa_s(self) -> float:
        return math.exp(-self.config.dt_ms / self.config.synapse_tau_ms)

    def branch_input_weights(self) -> torch.Tensor:
        """(num_branch, num_input): how much input i adds to branch b per spike (w_s, sign, routing)."""
        c = self.config
        weights = self.w_s * self.valid_indices_mask
        matrix = weights.new_zeros(c.num_branch, c.num_input)
        # accumulate: a branch may read an input twice (the clamped entries, masked to 0 anyway)
        matrix = matrix.index_put((self.branch_of_synapse, self.input_to_synapse_indices), weights, accumulate=True)
        return matrix * self.synapse_type

    # ------------------------------------------------------------------ the model
    def forward(self, input_spikes: torch.Tensor, recurrence: str = "auto") -> torch.Tensor:
        """input_spikes (B, T, num_input) 0/1 -> (B, T, 2): spike logit, scaled soma voltage (surrogate.targets).

        recurrence: how the memory recurrence runs, "auto" (the fused kernel on CUDA),
        "reference" or "fused" (see memory_recurrence); the same function either way.
        """
        c = self.config
        # The ELM is small and recurrent: keep it in fp32 even under autocast.
        with torch.autocast(device_type=input_spikes.device.type, enabled=False):
            x = input_spikes.float()
            # a_t: what the spikes of step t add to each branch (linear in x, all t at once)
            if c.num_branch:
                a = x @ self.branch_input_weights().T
            else:
                a = x * (self.w_s * self.synapse_type)
            # b_t = sum over a branch of s_t; the traces share kappa_s, so filter the sums
            if self.w_hb.out_features < a.shape[-1]:
                # filter and W_hb are both linear in time-independent ways, so they commute:
                # project onto the fewer hidden units first (10x faster for the plain ELM)
                drive = exponential_filter(a @ self.w_hb.weight.T, self.kappa_s) + self.w_hb.bias
            else:
                b = exponential_filter(a, self.kappa_s)
                drive = self.w_hb(b)  # W_hb b_t + c_h
            # m_t = kappa_m * m_{t-1} + lambda (1 - kappa_m) 1.7159 tanh(2/3 z_t), for t = 1..T
            memory = memory_recurrence(drive, self.kappa_m, self.w_hm.weight, self.w_zh.weight, self.w_zh.bias,
                                       c.lambda_value, c.mlp_activation, implementation=recurrence)
            return self.w_y(memory)  # y_t = W_y m_t + b_y


def num_parameters(model: nn.Module) -> int:
    """Trainable parameters (the convention of the published model_param_count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
