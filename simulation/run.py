"""One NeuronIO simulation: the L5PC with 1278 synapses driven by an input raster.

The cell and its synapses are built once per process (`get_simulator`); each `run` queues
the raster's events, integrates T ms and resamples the traces (spec sections 4 and 6):

    input_spikes (1278, T) -> NetCon events at t ms -> NEURON (cvode | fixed | coreneuron)
    -> soma / nexus traces at 1 and 8 samples/ms -> output spikes (spec 6.4, 7.2)

Row k < 639 of input_spikes drives the AMPA+NMDA synapse on segment k, row 639 + k the
GABA_A synapse on the same segment (architecture.md, spec 4.1).

Sampling. The soma and nexus voltages are recorded at every integration step and linearly
interpolated onto the 1-ms and 0.125-ms grids, exactly as NeuronIO resampled its variable-step
traces (spec 6.3); under a fixed step the grid points are (up to rounding) step times. The 639
dendritic voltages, when asked for, are recorded by NEURON itself at t = 0, 1, 2, ... ms
(Vector.record with Dt = 1 ms), which avoids keeping 639 full-resolution traces in memory.
Under CVODE the input events at whole ms make those times step boundaries, so both ways give
the same numbers (checked: the nexus segment's row equals the interpolated nexus trace).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.spikes import spike_raster

from .config import SimulationConfig
from .errors import InputShapeError

# NetCon.event(t) delivers at t whatever the NetCon's delay, so the delay of these source-less
# NetCons never matters (NeuronIO used 0, spec 4.5). CoreNEURON refuses a zero minimum delay,
# hence a positive one.
NETCON_DELAY_MS = 1.0

# wall-clock seconds without progress after which NEURON aborts a simulation (see L5PCSimulator)
STALLED_STEP_TIMEOUT_S = 600


@dataclass
class SimulationResult:
    """What one simulation returns; T = number of 1-ms input bins."""

    soma_voltage: np.ndarray  # (T,) float32 mV at t = 0, 1, ..., T-1 ms
    nexus_voltage: np.ndarray  # (T,) float32 mV at apic[50](0.9)
    output_spike_times: np.ndarray  # float64 ms, NeuronIO rule on the 8 samples/ms soma trace (spec 6.4)
    output_spikes: np.ndarray  # (T,) bool, spike at t ms in bin int(t - 0.5) (spec 7.2)
    segment_voltages: np.ndarray | None = None  # (639, T) float32, if [recording] segment_voltages


# --------------------------------------------------------------------------- pure functions

def detect_spikes(voltage: np.ndarray, times: np.ndarray, threshold: float = -25.0) -> np.ndarray:
    """NeuronIO's spike rule (spec 6.4): strict local maxima above `threshold`; returns their times.

    The first and last samples cannot be spikes (they lack a neighbour).
    """
    v = np.asarray(voltage, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if v.shape != t.shape or v.ndim != 1:
        raise ValueError(f"voltage and times must be 1-d arrays of one length, got {v.shape} and {t.shape}")
    if len(v) < 3:
        return np.zeros(0, dtype=np.float64)
    centre = v[1:-1]
    is_peak = (centre - v[:-2] > 0) & (v[2:] - centre < 0) & (centre > threshold)
    return t[1:-1][is_peak]


def check_input_spikes(input_spikes, n_inputs: int) -> np.ndarray:
    """The raster as a (n_inputs, T) bool array; InputShapeError if it is not a 0/1 array of that shape."""
    array = np.asarray(input_spikes)
    if array.ndim != 2 or array.shape[0] != n_inputs or array.shape[1] < 1:
        raise InputShapeError(f"input_spikes has shape {array.shape}, expected ({n_inputs}, T) with T >= 1 bins of 1 ms")
    if array.dtype != np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise InputShapeError(f"input_spikes has dtype {array.dtype}, expected bool or 0/1 numbers")
        if not np.isin(array, (0, 1)).all():
            raise InputShapeError("input_spikes must hold only 0 and 1 (one spike at most per synapse and 1-ms bin)")
        array = array.astype(bool)
    return array


# --------------------------------------------------------------------------- the simulator

class L5PCSimulator:
    """The cell plus one AmpaNmda and one GabaA synapse at every dendritic segment centre (spec 4.1)."""

    def __init__(self, config: SimulationConfig, morphology: str | Path):
        from neuron import h

        from .cell import L5PCCell
        from .mechanisms import load_mechanisms

        self.config = config
        self.morphology = Path(morphology)
        # a CoreNEURON run needs the library built with -coreneuron; it also serves plain NEURON
        load_mechanisms(coreneuron=config.solver.method == "coreneuron")
        self.cell = L5PCCell(self.morphology, config.cell.biophysics, config.cell.celsius)
        self.segments = self.cell.segments
        self.n_inputs = 2 * self.segments.n_segments
        self._build_synapses()

        self.soma_site = self.cell.soma[0](0.5)
        self.nexus_site = self.cell.nexus_segment(config.cell.nexus_section, config.cell.nexus_x)
        self._time = h.Vector().record(h._ref_t)
        self._soma = h.Vector().record(self.soma_site._ref_v)
        self._nexus = h.Vector().record(self.nexus_site._ref_v)
        self._segment_recorders = None  # made on the first run that asks for them

        self._parallel_context = h.ParallelContext()
        # psolve aborts the process (message "nrn_timeout") when simulated time has not advanced
        # for pc.timeout() s of wall time, 20 s by default: a worker starved of CPU or memory by
        # other processes for that long was killed mid-simulation. Only a truly stuck step should.
        self._parallel_context.timeout(STALLED_STEP_TIMEOUT_S)
        self._pending_events: list[tuple[object, np.ndarray]] = []
        # queue the raster after the mechanisms' INITIALIZE, at every finitialize (spec 4.5); the
        # handler holds only a weak reference, so that a dropped simulator frees its sections
        self._event_handler = h.FInitializeHandler(1, _QueueEvents(weakref.ref(self)))
        self.last_run_steps = 0  # integration steps of the last run (a cost measure)

    def _build_synapses(self) -> None:
        from neuron import h

        s = self.config.synapses
        self.excitatory, self.inhibitory, self.netcons = [], [], []
        for seg in self.cell.dendritic_segments():
            synapse = h.AmpaNmda(seg)
            synapse.tau_r_AMPA, synapse.tau_d_AMPA = s.ampa_tau_rise_ms, s.ampa_tau_decay_ms
            synapse.tau_r_NMDA, synapse.tau_d_NMDA = s.nmda_tau_rise_ms, s.nmda_tau_decay_ms
            synapse.gmax, synapse.e, synapse.mg = s.excitatory_gmax_uS, s.excitatory_reversal_mV, s.mg_mM
            self.excitatory.append(synapse)
        for seg in self.cell.dendritic_segments():
            synapse = h.GabaA(seg)
            synapse.tau_r, synapse.tau_d = s.gaba_tau_rise_ms, s.gaba_tau_decay_ms
            synapse.gmax, synapse.e = s.inhibitory_gmax_uS, s.inhibitory_reversal_mV
            self.inhibitory.append(synapse)
        # one source-less NetCon per synapse, weight 1, delay 0 (spec 4.5); row order of input_spikes
        for synapse in self.excitatory + self.inhibitory:
            netcon = h.NetCon(None, synapse)
            netcon.weight[0] = 1.0
            netcon.delay = NETCON_DELAY_MS
            self.netcons.append(netcon)

    def _queue_input_events(self) -> None:
        for netcon, times in self._pending_events:
            for t in times:
                netcon.event(t)

    def _record_segments(self) -> None:
        from neuron import h

        if self._segment_recorders is None:
            self._segment_recorders = [h.Vector().record(seg._ref_v, 1.0) for seg in self.cell.dendritic_segments()]

    def _configure_solver(self) -> None:
        from neuron import coreneuron, h

        solver = self.config.solver
        h.cvode.cache_efficient(1)
        coreneuron.enable = solver.method == "coreneuron"
        if solver.method == "cvode":
            h.cvode.active(1)
            h.cvode.atol(solver.cvode_atol)
            h.cvode.rtol(solver.cvode_rtol)
        else:
            h.cvode.active(0)
            h.dt = solver.dt_ms
            h.secondorder = solver.neuron_secondorder
        if solver.method == "coreneuron":
            coreneuron.gpu = False
            coreneuron.verbose = 0

    def run(self, input_spikes: np.ndarray) -> SimulationResult:
        """Simulate the raster's T ms from v_init; no pre-run, as NeuronIO (spec 1.7)."""
        from neuron import h

        raster = check_input_spikes(input_spikes, self.n_inputs)
        duration_ms = raster.shape[1]
        self._pending_events = [(self.netcons[k], np.flatnonzero(raster[k]).astype(np.float64))
                                for k in np.flatnonzero(raster.any(axis=1))]
        if self.config.recording.segment_voltages:
            self._record_segments()
        self._configure_solver()

        h.finitialize(self.config.cell.v_init_mV)
        self._parallel_context.set_maxstep(10)
        self._parallel_context.psolve(float(duration_ms))  # the whole loop in C, no Python per step
        self._pending_events = []
        self.last_run_steps = len(self._time) - 1
        return self._collect(duration_ms)

    def _collect(self, duration_ms: int) -> SimulationResult:
        recording = self.config.recording
        t = self._time.as_numpy()
        # NEURON may record the same time twice (at an event); keep the last value for interp
        keep = np.append(np.diff(t) > 0, True)
        t, soma, nexus = t[keep], self._soma.as_numpy()[keep], self._nexus.as_numpy()[keep]

        grid_1ms = np.arange(duration_ms, dtype=np.float64)
        per_ms = recording.high_resolution_per_ms
        grid_high = np.arange(duration_ms * per_ms, dtype=np.float64) / per_ms
        soma_high = np.interp(grid_high, t, soma)
        spike_times = detect_spikes(soma_high, grid_high, recording.spike_threshold_mV)

        segment_voltages = None
        if recording.segment_voltages:
            segment_voltages = np.stack([vec.as_numpy()[:duration_ms] for vec in self._segment_recorders])
            segment_voltages = segment_voltages.astype(np.float32)
        return SimulationResult(
            soma_voltage=np.interp(grid_1ms, t, soma).astype(np.float32),
            nexus_voltage=np.interp(grid_1ms, t, nexus).astype(np.float32),
            output_spike_times=spike_times.astype(np.float64),
            output_spikes=spike_raster(spike_times, duration_ms),
            segment_voltages=segment_voltages,
        )


class _QueueEvents:
    """The FInitializeHandler's callable: queues the pending input events of a live simulator."""

    def __init__(self, simulator_ref):
        self._simulator_ref = simulator_ref

    def __call__(self) -> None:
        simulator = self._simulator_ref()
        if simulator is not None:
            simulator._queue_input_events()


# --------------------------------------------------------------------------- one per process

_cached: tuple[tuple, L5PCSimulator] | None = None


def get_simulator(config: SimulationConfig, morphology: str | Path) -> L5PCSimulator:
    """The process's simulator, built on first use and rebuilt only when the cell would differ.

    The key is the tables that shape the cell and its synapses ([cell], [synapses]), the solver
    family (a CoreNEURON run needs its own mechanism build) and the morphology path; [solver]
    details and [recording] are read at every run, so they are just updated.
    """
    global _cached
    key = (config.cell, config.synapses, config.solver.method == "coreneuron", str(Path(morphology).resolve()))
    if _cached is None or _cached[0] != key:
        _cached = None  # drop the old cell's sections before building the new one
        _cached = (key, L5PCSimulator(config, morphology))
    simulator = _cached[1]
    simulator.config = config
    return simulator
