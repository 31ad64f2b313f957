"""Configuration: small TOML files under configs/, read into frozen dataclasses.

One TOML file holds every stage's tables; each stage reads its own tables and
ignores the others. Unknown tables or keys, wrong types and out-of-range values
raise ConfigError naming the file and the key, so a typo never passes silently
(the strict loader is common.config; CONFIG_TABLES below are the simulation's tables).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.config import from_table, read_toml, read_toml_layers, require  # noqa: F401  (read_toml: imported from here by callers)
from common.jsonio import plain


# --------------------------------------------------------------------------- simulation tables

@dataclass(frozen=True)
class CellConfig:
    """[cell]: which biophysics, temperature and initial voltage (spec 1.6, 1.7)."""

    biophysics: str = "neuronio"  # "neuronio" (biophys5b, NeuronIO) or "hay2011" (biophys3)
    celsius: float = 6.3  # NEURON's default, as NeuronIO; only enters the Nernst eca (spec 1.6)
    v_init_mV: float = -76.0
    nexus_section: str = "apic[50]"  # NeuronIO's "nexus" recording site (spec 6.2)
    nexus_x: float = 0.9

    def __post_init__(self):
        require(self.biophysics in ("neuronio", "hay2011"), f"biophysics must be 'neuronio' or 'hay2011', got {self.biophysics!r}")
        require(0.0 <= self.nexus_x <= 1.0, f"nexus_x must be in [0, 1], got {self.nexus_x}")


@dataclass(frozen=True)
class SynapseConfig:
    """[synapses]: one AMPA+NMDA and one GABA_A synapse per segment (spec 4.2, 4.3)."""

    ampa_tau_rise_ms: float = 0.3
    ampa_tau_decay_ms: float = 3.0
    nmda_tau_rise_ms: float = 2.0
    nmda_tau_decay_ms: float = 70.0
    excitatory_gmax_uS: float = 0.0004  # per component (AMPA and NMDA share it)
    excitatory_reversal_mV: float = 0.0
    mg_mM: float = 1.0
    gaba_tau_rise_ms: float = 0.2
    gaba_tau_decay_ms: float = 8.0
    inhibitory_gmax_uS: float = 0.001
    inhibitory_reversal_mV: float = -80.0

    def __post_init__(self):
        for name in ("ampa", "nmda", "gaba"):
            rise, decay = getattr(self, f"{name}_tau_rise_ms"), getattr(self, f"{name}_tau_decay_ms")
            require(0 < rise < decay, f"{name}: need 0 < tau_rise < tau_decay, got {rise}, {decay}")


@dataclass(frozen=True)
class InputConfig:
    """[inputs]: the NeuronIO input generator (spec section 5), every range configurable."""

    duration_ms: int = 6000
    rate_change_interval_ms: tuple[int, ...] = (25, 30, 35, 40, 45, 55, 60, 65, 70, 75, 80, 85, 90, 100, 150, 200, 300, 450)
    smoothing_sigma_ms: tuple[int, ...] = (25, 30, 35, 40, 50, 60, 80, 100, 150, 200, 300, 400, 500, 600)
    jitter_range_ms: int = 20  # jitter trunc(2*range*U - range), spec 5 steps 1-2
    excitation_per_100ms: tuple[float, float] = (0.0, 800.0)  # spikes per 100 ms per tree
    inhibition_minus_excitation_per_100ms: tuple[float, float] = (-600.0, 200.0)
    spatial_noise_range: tuple[float, float] = (0.5, 1.5)
    min_segment_length_um: float = 10.0

    def __post_init__(self):
        require(self.duration_ms > 0, f"duration_ms must be positive, got {self.duration_ms}")
        require(len(self.rate_change_interval_ms) > 0, "rate_change_interval_ms is empty")
        require(len(self.smoothing_sigma_ms) > 0, "smoothing_sigma_ms is empty")
        require(min(self.rate_change_interval_ms) - self.jitter_range_ms >= 1,
                 "rate_change_interval_ms minus jitter_range_ms must stay >= 1 ms")
        require(min(self.smoothing_sigma_ms) - self.jitter_range_ms >= 1,
                 "smoothing_sigma_ms minus jitter_range_ms must stay >= 1 ms")
        lo, hi = self.excitation_per_100ms
        require(0 <= lo < hi, f"excitation_per_100ms must satisfy 0 <= low < high, got {self.excitation_per_100ms}")
        lo, hi = self.inhibition_minus_excitation_per_100ms
        require(lo < hi, f"inhibition_minus_excitation_per_100ms must satisfy low < high, got {self.inhibition_minus_excitation_per_100ms}")
        lo, hi = self.spatial_noise_range
        require(0 <= lo < hi, f"spatial_noise_range must satisfy 0 <= low < high, got {self.spatial_noise_range}")


SOLVER_METHODS = ("cvode", "fixed", "coreneuron", "gpu")
TIME_STEP_SCHEMES = ("backward-euler", "crank-nicolson")
GPU_PRECISIONS = ("float64", "float32")
GPU_MATH = ("exact", "fast")  # the GPU engine's math functions and division (SolverConfig.gpu_math)


@dataclass(frozen=True)
class SolverConfig:
    """[solver]: how the cell's equations are integrated.

    method: "cvode" (NEURON's variable step, as NeuronIO), "fixed" (NEURON's fixed step, dt_ms),
    "coreneuron" (fixed step on CoreNEURON's CPU engine) or "gpu" (the project's GPU engine,
    simulation/gpu/, NEURON's fixed-step numerics for a batch of cells at once).
    scheme: the fixed-step scheme of "fixed", "coreneuron" and "gpu": "backward-euler" (NEURON's
    default, secondorder = 0) or "crank-nicolson" (NEURON's secondorder = 2: second-order
    voltages, ionic currents corrected to the half step).
    gpu_precision: floating point of the GPU engine's state and arithmetic.
    gpu_math: "exact" (IEEE division and the CUDA math library: bit for bit the CPU twin's
    results in float64) or "fast" (nvcc's --use_fast_math: the GPU's hardware approximations of
    float32 exp, log and division, a few ulp each; judged by its fidelity to CVode, README;
    float64 and the CPU twin compute as "exact").
    gpu_launch: the CUDA kernel's launch shape, CELLSxGROUPS/BLOCKS (simulation/gpu/backends.py,
    LaunchConfig; "" = the fastest measured for gpu_precision). It changes speed, never results.
    """

    # The default is NeuronIO's own setting: against it no fixed-step CPU setting faster than it
    # met the fidelity targets (bench/results/solver_fidelity.json, README "Solver fidelity").
    method: str = "cvode"
    dt_ms: float = 0.025
    scheme: str = "crank-nicolson"
    cvode_atol: float = 1e-3  # NEURON's default absolute tolerance, as NeuronIO (spec 6.1)
    cvode_rtol: float = 0.0
    gpu_precision: str = "float64"
    gpu_backend: str = "cuda"  # "cuda", or "cpu": the engine's CPU twin (same numerics on CPU threads; tests, no GPU)
    gpu_math: str = "exact"
    gpu_launch: str = ""

    def __post_init__(self):
        require(self.method in SOLVER_METHODS, f"method must be one of {', '.join(repr(m) for m in SOLVER_METHODS)}, got {self.method!r}")
        require(self.dt_ms > 0 and abs(round(1.0 / self.dt_ms) * self.dt_ms - 1.0) < 1e-9,
                 f"dt_ms must divide 1 ms exactly (input spikes arrive on whole ms), got {self.dt_ms}")
        require(self.scheme in TIME_STEP_SCHEMES, f"scheme must be one of {', '.join(repr(s) for s in TIME_STEP_SCHEMES)}, got {self.scheme!r}")
        require(self.cvode_atol > 0, f"cvode_atol must be positive, got {self.cvode_atol}")
        require(self.gpu_precision in GPU_PRECISIONS, f"gpu_precision must be one of {', '.join(repr(p) for p in GPU_PRECISIONS)}, got {self.gpu_precision!r}")
        require(self.gpu_backend in ("cuda", "cpu"), f"gpu_backend must be 'cuda' or 'cpu', got {self.gpu_backend!r}")
        require(self.gpu_math in GPU_MATH, f"gpu_math must be one of {', '.join(repr(m) for m in GPU_MATH)}, got {self.gpu_math!r}")
        if self.gpu_launch:
            from simulation.gpu.backends import LaunchConfig

            try:
                LaunchConfig.parse(self.gpu_launch)
            except ValueError as err:
                require(False, f"gpu_launch: {err}")

    @property
    def steps_per_ms(self) -> int:
        return int(round(1.0 / self.dt_ms))

    @property
    def neuron_secondorder(self) -> int:
        """NEURON's h.secondorder for this scheme (0: backward Euler, 2: Crank-Nicolson)."""
        return 2 if self.scheme == "crank-nicolson" else 0


@dataclass(frozen=True)
class RecordingConfig:
    """[recording]: what one simulation stores (spec 6.2-6.4)."""

    spike_threshold_mV: float = -25.0  # NeuronIO rule: strict local maximum above this (spec 6.4)
    high_resolution_per_ms: int = 8  # spike detection grid, 8 samples/ms as NeuronIO
    segment_voltages: bool = False  # also store all 639 dendritic segment voltages at 1 ms


@dataclass(frozen=True)
class DatasetConfig:
    """[dataset]: how many shards of how many simulations, and the master seed."""

    n_shards: int = 4
    simulations_per_shard: int = 4
    seed: int = 0
    compression_level: int = 4  # gzip level for input_spikes

    def __post_init__(self):
        require(self.n_shards > 0, f"n_shards must be positive, got {self.n_shards}")
        require(self.simulations_per_shard > 0, f"simulations_per_shard must be positive, got {self.simulations_per_shard}")
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        require(0 <= self.compression_level <= 9, f"compression_level must be in 0..9, got {self.compression_level}")


@dataclass(frozen=True)
class ParallelConfig:
    """[parallel]: the dask LocalCluster used when no --scheduler is given."""

    workers: int = 0  # 0: one single-threaded worker process per core (per GPU for method "gpu")
    retries: int = 2  # a failing simulation is retried this many times, then reported
    gpus: int = 0  # method "gpu": GPUs the local cluster uses, one worker each (0: every visible GPU)
    gpu_batch_size: int = 2048  # method "gpu": simulations one task integrates at once on its GPU

    def __post_init__(self):
        require(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        require(self.retries >= 0, f"retries must be >= 0, got {self.retries}")
        require(self.gpus >= 0, f"gpus must be >= 0, got {self.gpus}")
        require(self.gpu_batch_size >= 1, f"gpu_batch_size must be >= 1, got {self.gpu_batch_size}")


@dataclass(frozen=True)
class SimulationConfig:
    cell: CellConfig = field(default_factory=CellConfig)
    synapses: SynapseConfig = field(default_factory=SynapseConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples), suitable for JSON/TOML round trips and HDF5 attributes."""
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "SimulationConfig":
        tables = {f.name: f.type for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        return cls(**{name: from_table(hints[name], raw.get(name), f"{where} [{name}]") for name in tables})


# the simulation's tables of a config file (common.config.read_toml refuses tables no side owns)
CONFIG_TABLES = tuple(f.name for f in dataclasses.fields(SimulationConfig))


def load_simulation_config(path: str | Path | Sequence[str | Path]) -> SimulationConfig:
    """Read the simulation tables of a config file, or of several layered (common.config.read_toml_layers:
    `simulate --config configs/neuronio_gpu.toml --config configs/datasets/ten_thousand_simulations.toml`)."""
    raw, where = read_toml_layers(path)
    return SimulationConfig.from_dict(raw, where=where)
