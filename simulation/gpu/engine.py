"""GPUEngine: a batch of input rasters in, one SimulationResult per raster out.

    engine = GPUEngine(export_cell(simulator), config.solver, config.recording)
    results = engine.run(input_spikes)          # (n, 1278, T) bool -> [SimulationResult] * n

The engine copies the exported cell into the Model struct once, then per batch: turns each
raster into a compact event list (for every ms, the rows that fire), initialises every cell
as NEURON's finitialize does, and advances all cells together in chunks of `chunk_ms`, copying
that chunk's 1-ms traces and spikes back. Memory therefore grows with the number of cells,
not with the number of steps: per cell the states (about 100 KB in float64) and its events.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..config import RecordingConfig, SolverConfig
from ..errors import InputShapeError
from ..run import SimulationResult, check_input_spikes, spike_raster
from .backends import DEFAULT_LAUNCH, LaunchConfig, make_backend
from .export import CellExport
from .layout import (BATCH_FIELDS, CHANNEL_BITS, HAS_EXCITATORY, HAS_INHIBITORY, MEMBRANE, MODEL_FIELDS, node_states,
                     pack, real_dtype)

MAX_SPIKES_PER_MS = 4  # strict local maxima on an 8 samples/ms grid: at most one every other sample


@dataclass(frozen=True)
class EventList:
    """One simulation's input spikes as events: rows[offsets[t]:offsets[t + 1]] fire at t ms."""

    offsets: np.ndarray  # (T + 1,) int64
    rows: np.ndarray  # uint16, the input_spikes rows (synapses)

    @property
    def duration_ms(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_raster(cls, input_spikes: np.ndarray) -> "EventList":
        # time-major, so sorted by ms; flat indices of the transposed copy, 1.5-2.5x faster than nonzero on the view
        ms, rows = np.divmod(np.flatnonzero(np.asarray(input_spikes, dtype=bool).T), input_spikes.shape[0])
        offsets = np.zeros(input_spikes.shape[1] + 1, dtype=np.int64)
        np.cumsum(np.bincount(ms, minlength=input_spikes.shape[1]), out=offsets[1:])
        return cls(offsets=offsets, rows=rows.astype(np.uint16))

    def head(self, duration_ms: int) -> "EventList":
        """The events of the first `duration_ms` ms (a short warm-up run, say)."""
        duration_ms = min(duration_ms, self.duration_ms)
        return EventList(offsets=self.offsets[:duration_ms + 1], rows=self.rows[:self.offsets[duration_ms]])

    def to_raster(self, n_inputs: int) -> np.ndarray:
        raster = np.zeros((n_inputs, self.duration_ms), dtype=bool)
        ms = np.repeat(np.arange(self.duration_ms), np.diff(self.offsets))
        raster[self.rows, ms] = True
        return raster


def depth_first_order(parent: np.ndarray) -> np.ndarray:
    """Nodes in depth-first order from the root: order[k] is the k-th node visited.

    Every node is then visited right after its parent or after a finished sibling subtree, so
    that most nodes are their successor's parent (timestep.h's solve keeps such chains in
    registers). The first child in NEURON's order is visited first.
    """
    children: list[list[int]] = [[] for _ in parent]
    for node in range(1, len(parent)):
        children[parent[node]].append(node)
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(children[node]))
    return np.asarray(order, dtype=np.int64)


def depth_first(cell: CellExport) -> CellExport:
    """The same cell with its nodes renumbered depth first (every per-node array and node index)."""
    order = depth_first_order(cell.parent)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    per_node = {name: getattr(cell, name)[order] for name in
                ("area_um2", "a", "b", "cm", "node_name", "pas_g", "pas_e", "ena", "ek", "cao")}
    parent = np.where(cell.parent[order] < 0, -1, rank[np.maximum(cell.parent[order], 0)]).astype(np.int32)
    return dataclasses.replace(
        cell, parent=parent, **per_node,
        inserted={c: v[order] for c, v in cell.inserted.items()},
        parameters={c: {p: v[order] for p, v in table.items()} for c, table in cell.parameters.items()},
        excitatory_node=rank[cell.excitatory_node].astype(np.int32), inhibitory_node=rank[cell.inhibitory_node].astype(np.int32),
        soma_node=int(rank[cell.soma_node]), nexus_node=int(rank[cell.nexus_node]),
        segment_nodes=rank[cell.segment_nodes].astype(np.int32),
    )


@dataclass(frozen=True)
class NodeLayout:
    """How the engine lays out a (depth-first numbered) cell: node classes, state blocks, chains.

    Nodes with the same mechanisms form a class (layout.py's masks); a node's states are one
    block of node_states(mask) slots, blocks of a class one after the other. Chains are runs
    of nodes each the parent of the next, which the tree solve eliminates in registers.
    """

    cell: CellExport
    class_masks: tuple[int, ...]
    class_begin: np.ndarray  # int32 (n_classes + 1,): class c's nodes are class_nodes[begin[c]:begin[c + 1]]
    class_nodes: np.ndarray  # int32, every node once
    class_state_base: np.ndarray  # int32 (n_classes,): the first state slot of class c
    chain_first: np.ndarray  # int32 per chain: its first (most proximal) node
    chain_last: np.ndarray  # its last node
    chain_parent: np.ndarray  # the parent of its first node, a node of another chain (-1: the root chain)
    level_begin: np.ndarray  # int32 (n_levels + 1,): the chains of level L are level_chains[begin[L]:begin[L + 1]]
    level_chains: np.ndarray
    n_states: int

    @classmethod
    def of(cls, cell: CellExport) -> "NodeLayout":
        n = cell.n_nodes
        masks = np.zeros(n, dtype=np.int64)
        masks[cell.cm > 0] |= MEMBRANE
        masks[cell.excitatory_node] |= HAS_EXCITATORY
        masks[cell.inhibitory_node] |= HAS_INHIBITORY
        for channel, bit in CHANNEL_BITS.items():
            masks[cell.inserted[channel]] |= bit
        class_masks = tuple(dict.fromkeys(int(m) for m in masks))  # in order of first appearance
        class_nodes = [np.flatnonzero(masks == m) for m in class_masks]
        sizes = [len(nodes) * node_states(m) for m, nodes in zip(class_masks, class_nodes)]
        state_base = np.concatenate([[0], np.cumsum(sizes)])
        # chains: a new one starts wherever a node is not its predecessor's child
        first = np.flatnonzero(np.append(True, cell.parent[1:] != np.arange(1, n) - 1))
        last = np.append(first[1:] - 1, n - 1)
        chain_of = np.repeat(np.arange(len(first)), last - first + 1)
        chain_parent = np.where(first > 0, cell.parent[np.maximum(first, 1)], -1)
        chain_parent[0] = -1
        level = np.zeros(len(first), dtype=np.int64)
        for c in range(len(first) - 1, 0, -1):  # a branch has a higher first node than the chain it joins
            parent_chain = chain_of[chain_parent[c]]
            level[parent_chain] = max(level[parent_chain], level[c] + 1)
        level_chains = np.argsort(level, kind="stable")
        return cls(
            cell=cell, class_masks=class_masks,
            class_begin=np.concatenate([[0], np.cumsum([len(x) for x in class_nodes])]).astype(np.int32),
            class_nodes=np.concatenate(class_nodes).astype(np.int32),
            class_state_base=state_base[:-1].astype(np.int32),
            chain_first=first.astype(np.int32), chain_last=last.astype(np.int32), chain_parent=chain_parent.astype(np.int32),
            level_begin=np.searchsorted(level[level_chains], np.arange(level.max() + 2)).astype(np.int32),
            level_chains=level_chains.astype(np.int32),
            n_states=int(state_base[-1]),
        )


class GPUEngine:
    """The exported cell on a device ("cuda", or "cpu" for the CPU twin), ready to run batches."""

    def __init__(self, cell: CellExport, solver: SolverConfig, recording: RecordingConfig,
                 backend: str = "cuda", cpu_threads: int = 1, launch: LaunchConfig | None = None,
                 node_arrays: str = "auto"):
        self.cell, self.solver, self.recording = cell, solver, recording
        self.precision = solver.gpu_precision
        self.real = real_dtype(self.precision)
        self.layout = NodeLayout.of(depth_first(cell))
        if launch is None:  # the config's shape, else the fastest measured at this precision
            launch = LaunchConfig.parse(solver.gpu_launch) if solver.gpu_launch else DEFAULT_LAUNCH[self.precision]
        self.backend = make_backend(backend, self.precision, self.layout.class_masks, launch, cell.n_nodes, node_arrays,
                                    fast_math=solver.gpu_math == "fast")
        if backend == "cpu":
            self.backend.threads = max(1, cpu_threads)
        self.last_run_seconds = 0.0
        self.last_run_device_bytes = 0  # the batch's arrays on the device (the model's are shared)
        self._model_arrays, self._model_values = self._model()
        self._model_struct = self.backend.struct(pack(MODEL_FIELDS, self._model_values, self.real, self.backend.address))

    @property
    def n_inputs(self) -> int:
        return self.cell.n_inputs

    # ------------------------------------------------------------------ the Model struct

    def _model(self) -> tuple[list, dict]:
        layout = self.layout
        cell = layout.cell
        solver, real = self.solver, self.real
        n = cell.n_nodes
        dt = solver.dt_ms
        second_order = solver.neuron_secondorder
        cj = (2.0 if second_order else 1.0) / dt  # NEURON's cj: 1/dt, 2/dt for secondorder

        d_axial = -cell.b.copy()  # node i's equation: -b_i; its parent's: -a_i
        np.add.at(d_axial, cell.parent[1:], -cell.a[1:])

        node_excitatory = np.full(n, -1, dtype=np.int32)
        node_excitatory[cell.excitatory_node] = np.arange(len(cell.excitatory_node))
        node_inhibitory = np.full(n, -1, dtype=np.int32)
        node_inhibitory[cell.inhibitory_node] = np.arange(len(cell.inhibitory_node))
        exc, inh = cell.excitatory, cell.inhibitory
        ktf = 1000.0 * cell.gas_constant * (cell.celsius + 273.15) / cell.faraday  # NEURON's ktf (mV)

        # children of every node, for gathering the axial currents per node
        order = np.argsort(cell.parent[1:], kind="stable") + 1
        child_begin = np.searchsorted(cell.parent[order], np.arange(n + 1)).astype(np.int32)
        arrays = {
            "parent": cell.parent.astype(np.int32), "child_begin": child_begin, "children": order.astype(np.int32),
            "class_begin": layout.class_begin, "class_nodes": layout.class_nodes, "class_state_base": layout.class_state_base,
            "chain_first": layout.chain_first, "chain_last": layout.chain_last, "chain_parent": layout.chain_parent,
            "level_begin": layout.level_begin, "level_chains": layout.level_chains,
            "node_excitatory": node_excitatory, "node_inhibitory": node_inhibitory,
            "record_nodes": cell.segment_nodes.astype(np.int32),
            "a": cell.a, "b": cell.b, "d_axial": d_axial, "cm": cell.cm, "area": cell.area_um2,
            "pas_g": cell.pas_g, "pas_e": cell.pas_e, "ena": np.nan_to_num(cell.ena), "ek": np.nan_to_num(cell.ek),
            "cao": np.nan_to_num(cell.cao),
            **{f"{p}_{c}": values for c, table in cell.parameters.items() for p, values in table.items()},
            "exc_gmax": exc["gmax"], "exc_e": exc["e"], "exc_mg": exc["mg"],
            "exc_factor_ampa": exc["factor_AMPA"], "exc_factor_nmda": exc["factor_NMDA"],
            # cnexp of A' = -A / tau: A(t + dt) = A(t) exp(-dt / tau)
            "exc_decay_rise_ampa": np.exp(-dt / exc["tau_r_AMPA"]), "exc_decay_decay_ampa": np.exp(-dt / exc["tau_d_AMPA"]),
            "exc_decay_rise_nmda": np.exp(-dt / exc["tau_r_NMDA"]), "exc_decay_decay_nmda": np.exp(-dt / exc["tau_d_NMDA"]),
            "inh_gmax": inh["gmax"], "inh_e": inh["e"], "inh_factor": inh["factor"],
            "inh_decay_rise": np.exp(-dt / inh["tau_r"]), "inh_decay_decay": np.exp(-dt / inh["tau_d"]),
        }
        kinds = dict(MODEL_FIELDS)
        device_arrays = {}
        for name, array in arrays.items():
            dtype = real if kinds[name] == "real*" else np.int32
            device_arrays[name] = self.backend.to_device(np.ascontiguousarray(array, dtype=dtype))
        values = {
            **device_arrays,
            "n_nodes": n, "n_excitatory": len(cell.excitatory_node), "n_inhibitory": len(cell.inhibitory_node),
            "n_states": layout.n_states, "n_record": len(cell.segment_nodes), "n_chains": len(layout.chain_first),
            "n_levels": len(layout.level_begin) - 1,
            "steps_per_ms": solver.steps_per_ms, "samples_per_ms": self.recording.high_resolution_per_ms,
            "soma_node": cell.soma_node, "nexus_node": cell.nexus_node, "second_order": second_order,
            "dt": dt, "cfac": 1e-3 * cj, "voltage_step_factor": 2.0 if second_order else 1.0, "ktf": ktf,
            "faraday": cell.faraday, "v_init": cell.v_init_mV, "cai0": cell.cai0_mM,
            "spike_threshold": self.recording.spike_threshold_mV,
            **{f"{g}_{c}": value for c, table in cell.channel_globals.items() for g, value in table.items()},
        }
        return list(device_arrays.values()), values

    # ------------------------------------------------------------------ running a batch

    def run(self, inputs: Sequence[EventList] | np.ndarray, record_segments: bool | None = None,
            chunk_ms: int = 250, progress: Callable[[int, int], None] | None = None) -> list[SimulationResult]:
        """Simulate every raster (or EventList) of `inputs` from v_init, all of the same duration."""
        with self.backend.context():
            return self._run(inputs, record_segments, chunk_ms, progress)

    def _run(self, inputs, record_segments, chunk_ms, progress) -> list[SimulationResult]:
        events = self._events(inputs)
        if record_segments is None:
            record_segments = self.recording.segment_voltages
        n_simulations, duration = len(events), events[0].duration_ms
        # pad the batch to the backend's multiple with cells that get no input
        multiple = self.backend.cell_multiple
        silent = EventList(offsets=np.zeros(duration + 1, dtype=np.int64), rows=np.zeros(0, dtype=np.uint16))
        events = events + [silent] * (-n_simulations % multiple)
        n_cells = len(events)
        be, real = self.backend, self.real
        values = self._model_values
        started = time.perf_counter()

        offsets = np.empty((n_cells, duration + 1), dtype=np.int64)
        base = 0
        for c, e in enumerate(events):
            offsets[c] = e.offsets + base
            base += len(e.rows)
        rows = np.concatenate([e.rows for e in events]) if base else np.zeros(1, dtype=np.uint16)

        chunk_ms = max(1, min(chunk_ms, duration))
        max_spikes = MAX_SPIKES_PER_MS * chunk_ms + MAX_SPIKES_PER_MS
        n_record = values["n_record"]
        arrays = {
            "v": be.zeros((values["n_nodes"], n_cells), real),
            "state": be.zeros((max(1, values["n_states"]), n_cells), real),
            "excitatory_state": be.zeros((4 * values["n_excitatory"], n_cells), real),
            "inhibitory_state": be.zeros((2 * values["n_inhibitory"], n_cells), real),
            "rhs": be.zeros((values["n_nodes"], n_cells), real),
            "d": be.zeros((values["n_nodes"], n_cells), real),
            "sample_last": be.zeros(n_cells, real), "sample_before_last": be.zeros(n_cells, real),
            "event_offsets": be.to_device(offsets), "event_rows": be.to_device(rows),
            "soma_out": be.zeros((chunk_ms, n_cells), np.float32), "nexus_out": be.zeros((chunk_ms, n_cells), np.float32),
            "segment_out": be.zeros((chunk_ms, n_record, n_cells), np.float32) if record_segments else None,
            "spike_count": be.zeros(n_cells, np.int32), "spike_sample": be.zeros((max_spikes, n_cells), np.int32),
        }
        self.last_run_device_bytes = int(sum(a.nbytes for a in arrays.values() if a is not None))
        soma = np.empty((n_cells, duration), dtype=np.float32)
        nexus = np.empty((n_cells, duration), dtype=np.float32)
        segments = np.empty((n_cells, n_record, duration), dtype=np.float32) if record_segments else None
        spike_samples: list[list[np.ndarray]] = [[] for _ in range(n_cells)]

        def batch_struct(chunk_begin):
            record = pack(BATCH_FIELDS, {**arrays, "n_cells": n_cells, "duration_ms": duration,
                                         "chunk_begin_ms": chunk_begin, "max_spikes": max_spikes}, real, be.address)
            return be.struct(record)

        be.initialize(self._model_struct, batch_struct(0), n_cells)
        for begin in range(0, duration, chunk_ms):
            end = min(begin + chunk_ms, duration)
            arrays["spike_count"].fill(0)
            batch = batch_struct(begin)
            be.advance(self._model_struct, batch, n_cells, begin, end)
            be.synchronize()
            width = end - begin
            soma[:, begin:end] = be.to_host(arrays["soma_out"][:width]).T
            nexus[:, begin:end] = be.to_host(arrays["nexus_out"][:width]).T
            if record_segments:
                segments[:, :, begin:end] = be.to_host(arrays["segment_out"][:width]).transpose(2, 1, 0)
            counts = be.to_host(arrays["spike_count"])
            if counts.max(initial=0) > max_spikes:
                raise RuntimeError(f"more than {max_spikes} output spikes in {width} ms: the engine's spike buffer overflowed")
            if counts.any():
                samples = be.to_host(arrays["spike_sample"])
                for c in np.flatnonzero(counts):
                    spike_samples[c].append(samples[: counts[c], c].copy())
            if progress:
                progress(end, duration)
        self.last_run_seconds = time.perf_counter() - started

        samples_per_ms = self.recording.high_resolution_per_ms
        results = []
        for c in range(n_simulations):
            times = (np.concatenate(spike_samples[c]) if spike_samples[c] else np.zeros(0, np.int32)) / samples_per_ms
            results.append(SimulationResult(
                soma_voltage=soma[c], nexus_voltage=nexus[c],
                output_spike_times=times.astype(np.float64), output_spikes=spike_raster(times, duration),
                segment_voltages=segments[c] if record_segments else None,
            ))
        return results

    def _events(self, inputs) -> list[EventList]:
        if isinstance(inputs, np.ndarray):
            if inputs.ndim == 2:
                inputs = inputs[np.newaxis]
            if inputs.ndim != 3:
                raise InputShapeError(f"input_spikes has shape {inputs.shape}, expected (n, {self.n_inputs}, T)")
            inputs = [EventList.from_raster(check_input_spikes(raster, self.n_inputs)) for raster in inputs]
        events = list(inputs)
        if not events:
            raise InputShapeError("no simulations to run")
        durations = {e.duration_ms for e in events}
        if len(durations) != 1:
            raise InputShapeError(f"one batch needs one duration, got {sorted(durations)} ms")
        if any(len(e.rows) and int(e.rows.max()) >= self.n_inputs for e in events):
            raise InputShapeError(f"an input event names a row >= {self.n_inputs} (the cell's synapses)")
        return events
