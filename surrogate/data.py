"""Training data: targets (spec 7.2), the split by shard, random training windows, whole simulations.

Training windows follow the published NeuronIO loader ([ELM], after Beniaguev et al.): a
500-ms window starts uniformly in [500, T - 500) (the first 500 ms are ignored), the
simulations of a batch are drawn without replacement from the simulations currently
loaded, the start times with replacement.

Reading is the cost to manage: `input_spikes` is gzip-compressed in one HDF5 chunk per
simulation, so cutting a window straight from the file would decompress the whole
1278 x 6000 raster (30-50 ms) for 500 ms of it. Instead a *stream* loads
`simulations_per_load` simulations into memory, draws `load_fraction` of their simulated
time as windows, then loads a fresh random set (the published `file_load_fraction`).
Loaded simulations are kept bit-packed and time-major (6000 x 160 bytes = 0.96 MB for 6 s
instead of 7.7 MB as bool), in a cache of `cache_mb` per loading process, so a whole
NeuronIO-sized training set is decompressed once and a window is one contiguous slice.
Batches stay packed until they reach the device (`unpack_input_spikes`): 8x fewer bytes
through worker shared memory, pinning and the host-to-device copy.

Determinism: epoch e's batch i comes from stream i % streams, whose random numbers depend
only on (seed, e, stream). DataLoader workers each serve a fixed subset of the streams and
the DataLoader hands batches back in round-robin order, so the batches, and their order,
do not depend on the number of workers.

On a GPU with room for the whole training set, `[data] windows_on_device = true` skips all
of this: `DeviceWindows` reads every training simulation once and cuts the windows on the
device (uniformly over the whole set), so the loader cannot starve a fast model.
"""

from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from simulation.dataset import SHARD_GLOB, list_shards, open_shard, validate_shard
from simulation.errors import DatasetError

from .config import DataConfig
from .targets import SomaTransform


# --------------------------------------------------------------------------- targets (spec 7.2)

def soma_target(soma_voltage_mV: np.ndarray, data: DataConfig) -> np.ndarray:
    """Training soma target of [data]'s transform: (min(V, -55 mV) - (-67.7 mV)) * 0.1 by default, float32."""
    return SomaTransform.of(data).encode(soma_voltage_mV)


def spike_target(output_spikes: np.ndarray) -> np.ndarray:
    """Spike target: the stored output_spikes raster (already binned at int(t - 0.5), spec 7.2) as 0/1 float32."""
    return np.asarray(output_spikes).astype(np.float32)


# --------------------------------------------------------------------------- split by shard

def find_shards(data_dir: str | os.PathLike) -> list[Path]:
    """The dataset's shard files, sorted, each validated (simulation.dataset.validate_shard).

    The split is by position in this list, so one stray or damaged shard_*.h5 would shift
    every split silently: any shard that does not validate is a DatasetError naming it.
    A missing or empty directory is a DatasetError too.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory not found: {data_dir} (simulate a dataset first: python -m pipelines simulate)")
    paths = sorted(Path(p) for p in list_shards(data_dir))
    if not paths:
        raise DatasetError(f"no shards in {data_dir} (expected HDF5 shards written by python -m pipelines simulate)")
    for path in paths:
        try:
            validate_shard(path)
        except DatasetError as err:
            raise DatasetError(f"{err}; every {SHARD_GLOB} in {data_dir} is part of the train/valid/test split, "
                               "so move it out or re-create it") from None
    return paths


def require_distinct_shards(paths, consequence: str) -> None:
    """A DatasetError when two paths reach the same shard file (a link, or one directory given twice)."""
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise DatasetError(f"the same shard file is listed twice; {consequence}")


def split_shards(paths, data: DataConfig) -> dict[str, list[Path]]:
    """Split by shard, so that no simulation is in two splits: sorted list = train..., valid, test.

    The last `test_shards` shards are the test set, the `valid_shards` before them the
    validation set, the rest (at least one) the training set.
    """
    paths = sorted(Path(p) for p in paths)
    require_distinct_shards(paths, "a simulation would be in two splits")
    needed = data.valid_shards + data.test_shards + 1
    if len(paths) < needed:
        raise DatasetError(
            f"{len(paths)} shard(s) found but the split needs at least {needed} "
            f"(1 train + {data.valid_shards} valid + {data.test_shards} test, [data] valid_shards / test_shards)"
        )
    n_train = len(paths) - data.valid_shards - data.test_shards
    return {
        "train": paths[:n_train],
        "valid": paths[n_train:n_train + data.valid_shards],
        "test": paths[n_train + data.valid_shards:],
    }


# --------------------------------------------------------------------------- one simulation in memory

@dataclass(frozen=True)
class SimulationRef:
    """Where a simulation lives: a shard and its index in it."""

    shard: str
    index: int
    duration_ms: int


@dataclass
class LoadedSimulation:
    """A decompressed simulation, ready to cut windows from."""

    packed_input_spikes: np.ndarray  # (T, ceil(1278 / 8)) uint8: np.packbits over the inputs, time-major
    spike_target: np.ndarray  # (T,) float32
    soma_target: np.ndarray  # (T,) float32

    @property
    def nbytes(self) -> int:
        return self.packed_input_spikes.nbytes + self.spike_target.nbytes + self.soma_target.nbytes


def pack_input_spikes(raster: np.ndarray) -> np.ndarray:
    """(inputs, T) bool -> (T, ceil(inputs / 8)) uint8, bits in np.packbits' big-endian order.

    Input 8k + b sets bit 7 - b of byte k. Shifting whole contiguous rows is about 5x faster than
    np.packbits along axis 0 (strided) of the stored (inputs, T) layout; loading a training set
    onto the GPU is mostly this and gzip (bench/data_loading.py, pack_ms).
    """
    num_inputs, duration = raster.shape
    groups = -(-num_inputs // 8)
    bits = np.zeros((groups * 8, duration), dtype=np.uint8)
    bits[:num_inputs] = raster
    bits = bits.reshape(groups, 8, duration)
    packed = np.zeros((groups, duration), dtype=np.uint8)
    for b in range(8):
        packed |= bits[:, b] << (7 - b)
    return np.ascontiguousarray(packed.T)


def unpack_input_spikes(packed: torch.Tensor, num_inputs: int) -> torch.Tensor:
    """(..., ceil(num_inputs / 8)) uint8 -> (..., num_inputs) float32 0/1, on packed's device."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)  # big-endian, as np.packbits
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :num_inputs].float()


def catalog_simulations(paths) -> list[SimulationRef]:
    """Every simulation of the given shards, in shard then index order."""
    refs = []
    for path in paths:
        with open_shard(path) as f:
            n, _, duration = f["input_spikes"].shape
        refs.extend(SimulationRef(str(path), i, int(duration)) for i in range(n))
    return refs


def first_simulations(paths, max_simulations: int = 0) -> list[SimulationRef]:
    """The first `max_simulations` simulations (0: all) of the given shards, in shard then index order."""
    refs = catalog_simulations(paths)
    return refs[:max_simulations] if max_simulations else refs


def training_simulations(paths, data: DataConfig) -> list[SimulationRef]:
    """The simulations a model trains on: every one of the training shards, or the first
    [data] max_train_simulations of them in shard order (nested subsets for data-efficiency curves)."""
    return first_simulations(paths, data.max_train_simulations)


def checked_training_simulations(paths, data: DataConfig) -> tuple[list[SimulationRef], int]:
    """The training simulations (training_simulations) and their number of inputs; a one-line DatasetError
    when there are none or a simulation is too short for a window after ignore_first_ms."""
    refs = training_simulations(paths, data)
    if not refs:
        raise DatasetError("the training shards hold no simulations")
    shortest = min(ref.duration_ms for ref in refs)
    if shortest <= data.ignore_first_ms + data.window_ms:
        raise DatasetError(
            f"simulations of {shortest} ms are too short for {data.window_ms}-ms windows after the first "
            f"{data.ignore_first_ms} ms ([data] window_ms, ignore_first_ms)"
        )
    with open_shard(refs[0].shard) as f:
        num_inputs = int(f["input_spikes"].shape[1])
    return refs, num_inputs


def read_simulation(shard, index: int, data: DataConfig) -> LoadedSimulation:
    """Read one simulation from an open shard (decompresses exactly its input_spikes chunk)."""
    try:
        raster = shard["input_spikes"][index]  # (1278, T) bool
        output_spikes, soma_voltage = shard["output_spikes"][index], shard["soma_voltage"][index]
    except OSError as err:  # a damaged chunk surfaces only when it is read
        raise DatasetError(f"{shard.filename}: cannot read simulation {index} (corrupt shard?): {err}") from None
    return LoadedSimulation(
        packed_input_spikes=pack_input_spikes(raster),
        spike_target=spike_target(output_spikes),
        soma_target=soma_target(soma_voltage, data),
    )


class _OpenShards:
    """The shard files one process has open. A forked DataLoader worker opens its own: HDF5 handles are
    never shared between processes."""

    def __init__(self):
        self._files: dict[str, object] = {}
        self._open = contextlib.ExitStack()
        self._pid = os.getpid()

    def get(self, path: str):
        if self._pid != os.getpid():  # forked since: drop the parent's handles, do not close them
            self._files, self._open, self._pid = {}, contextlib.ExitStack(), os.getpid()
        if path not in self._files:
            self._files[path] = self._open.enter_context(open_shard(path))
        return self._files[path]

    def close(self) -> None:
        if self._pid == os.getpid():
            self._open.close()
        self._files.clear()


class SimulationCache:
    """Decompressed simulations kept in memory, shared by the streams of one process.

    Each stream holds one load (a list of simulations); a simulation stays cached while
    a stream holds it and, beyond that, until the cache holds more than `capacity_bytes`
    (least recently used first), so a training set that fits is decompressed only once.
    """

    def __init__(self, data: DataConfig, capacity_bytes: int):
        self.data = data
        self.capacity_bytes = capacity_bytes
        self.nbytes = 0
        self._simulations: collections.OrderedDict[SimulationRef, LoadedSimulation] = collections.OrderedDict()
        self._held: dict[int, set[SimulationRef]] = {}
        self._shards = _OpenShards()
        self.reads = 0  # simulations decompressed so far (for benchmarks)

    def load(self, stream: int, refs: list[SimulationRef]) -> list[LoadedSimulation]:
        self._held[stream] = set(refs)
        loaded = []
        for ref in sorted(refs, key=lambda r: (r.shard, r.index)):  # file order: sequential reads
            if ref in self._simulations:
                self._simulations.move_to_end(ref)
            else:
                simulation = read_simulation(self._shards.get(ref.shard), ref.index, self.data)
                self._simulations[ref] = simulation
                self.nbytes += simulation.nbytes
                self.reads += 1
        self._evict()
        return [self._simulations[ref] for ref in refs]

    def release(self, stream: int) -> None:
        self._held.pop(stream, None)

    def _evict(self) -> None:
        held = set().union(*self._held.values()) if self._held else set()
        for ref in list(self._simulations):
            if self.nbytes <= self.capacity_bytes:
                break
            if ref not in held:
                self.nbytes -= self._simulations.pop(ref).nbytes

    def close(self) -> None:
        self._shards.close()
        self._simulations.clear()
        self.nbytes = 0


# --------------------------------------------------------------------------- training windows

class TrainingWindows(IterableDataset):
    """Batches of random windows from the training shards, for epochs [first_epoch, last_epoch).

    Yields (packed_input_spikes (B, W, 160) uint8, spike_target (B, W) float32,
    soma_target (B, W) float32); `unpack_input_spikes(packed, windows.num_inputs)` gives the
    model's (B, W, 1278) input. One iterator runs over all remaining epochs, so DataLoader
    workers start once and keep their decompressed simulations between epochs.
    """

    def __init__(self, paths, data: DataConfig, batch_size: int, batches_per_epoch: int, seed: int,
                 first_epoch: int = 0, last_epoch: int = 1):
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.first_epoch, self.last_epoch = first_epoch, last_epoch
        self.simulations, self.num_inputs = checked_training_simulations(paths, data)
        self.cache: SimulationCache | None = None

    def __len__(self) -> int:
        return (self.last_epoch - self.first_epoch) * self.batches_per_epoch

    def batches_per_load(self, loaded: list[SimulationRef]) -> int:
        """Windows covering load_fraction of the loaded simulated time, in batches (published formula)."""
        loaded_ms = sum(ref.duration_ms for ref in loaded)
        return max(1, int(self.data.load_fraction * loaded_ms / (self.batch_size * self.data.window_ms)))

    def stream(self, epoch: int, stream: int, cache: SimulationCache):
        """The endless batches of one stream in one epoch."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, stream]))
        n_total = len(self.simulations)
        while True:
            chosen = rng.choice(n_total, size=min(self.data.simulations_per_load, n_total), replace=False)
            refs = [self.simulations[i] for i in chosen]
            loaded = cache.load(stream, refs)
            for _ in range(self.batches_per_load(refs)):
                yield self.draw_batch(rng, refs, loaded)

    def draw_batch(self, rng: np.random.Generator, refs: list[SimulationRef], loaded: list[LoadedSimulation]):
        d, batch, window = self.data, self.batch_size, self.data.window_ms
        which = rng.choice(len(loaded), size=batch, replace=len(loaded) < batch)
        # start uniform in [ignore_first_ms, T - window_ms): 500..5499 for 6 s (spec 7.2)
        starts = rng.integers(d.ignore_first_ms, np.array([refs[k].duration_ms for k in which]) - window)
        inputs = np.empty((batch, window, loaded[0].packed_input_spikes.shape[1]), dtype=np.uint8)
        spikes = np.empty((batch, window), dtype=np.float32)
        soma = np.empty((batch, window), dtype=np.float32)
        for b, (k, start) in enumerate(zip(which, starts)):
            sim = loaded[k]
            inputs[b] = sim.packed_input_spikes[start:start + window]
            spikes[b] = sim.spike_target[start:start + window]
            soma[b] = sim.soma_target[start:start + window]
        return torch.from_numpy(inputs), torch.from_numpy(spikes), torch.from_numpy(soma)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        streams = self.data.streams
        if streams % workers:
            raise ValueError(f"{workers} loader workers do not divide {streams} streams")
        if self.cache is None or info is not None:
            self.cache = SimulationCache(self.data, capacity_bytes=self.data.cache_mb * 2**20)
        cache = self.cache
        # DataLoader hands out items round-robin over workers: item g (counted over all
        # epochs) comes from worker g % workers. Item g is epoch e's batch i = g - e * B,
        # drawn from stream i % streams: this worker's streams in that epoch are fixed.
        for epoch in range(self.first_epoch, self.last_epoch):
            offset = (epoch - self.first_epoch) * self.batches_per_epoch
            generators = {}
            for i in range(self.batches_per_epoch):
                if (offset + i) % workers != worker:
                    continue
                s = i % streams
                if s not in generators:
                    generators[s] = self.stream(epoch, s, cache)
                yield next(generators[s])
            for s in generators:
                cache.release(s)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


class _SimulationReader(Dataset):
    """Map-style access to single simulations, for reading a whole training set with DataLoader workers."""

    def __init__(self, refs: list[SimulationRef], data: DataConfig):
        self.refs, self.data = refs, data
        self.shards = _OpenShards()

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        ref = self.refs[i]
        sim = read_simulation(self.shards.get(ref.shard), ref.index, self.data)
        return i, sim.packed_input_spikes, sim.spike_target, sim.soma_target


class DeviceWindows:
    """The whole training set held on the training device, windows cut there ([data] windows_on_device).

    Bit-packed inputs take 0.96 MB per 6-s simulation (2 GB for 2048 simulations), so a
    NeuronIO-scale training set fits a GPU many times over; a batch is then one gather on the
    device and no loader process, pinning or host-to-device copy can starve the model. Windows
    are drawn uniformly over the whole training set: a simulation uniformly (with replacement),
    a start uniformly in [ignore_first_ms, T - window_ms) (spec 7.2). The random numbers of
    epoch e depend only on (seed, e), so the batches do not depend on the device or on the
    number of processes that read the shards. Yields what TrainingWindows yields, already on
    the device.
    """

    def __init__(self, paths, data: DataConfig, batch_size: int, batches_per_epoch: int, seed: int,
                 device: torch.device, first_epoch: int = 0, last_epoch: int = 1):
        self.data, self.batch_size, self.batches_per_epoch, self.seed = data, batch_size, batches_per_epoch, seed
        self.first_epoch, self.last_epoch = first_epoch, last_epoch
        self.device = device
        refs, self.num_inputs = checked_training_simulations(paths, data)
        durations = sorted({ref.duration_ms for ref in refs})
        if len(durations) != 1:
            raise DatasetError(f"windows_on_device needs simulations of one duration, found {durations} ms; "
                               "set [data] windows_on_device = false")
        self.duration_ms = durations[0]
        n, t = len(refs), self.duration_ms
        self.packed_input_spikes = torch.empty((n, t, (self.num_inputs + 7) // 8), dtype=torch.uint8, device=device)
        self.spike_target = torch.empty((n, t), dtype=torch.float32, device=device)
        self.soma_target = torch.empty((n, t), dtype=torch.float32, device=device)
        reader = _SimulationReader(refs, data)
        try:  # loader_workers processes decompress side by side
            for i, packed, spikes, soma in DataLoader(reader, batch_size=None, num_workers=data.loader_workers,
                                                      prefetch_factor=data.prefetch if data.loader_workers else None):
                self.packed_input_spikes[i] = packed.to(device)
                self.spike_target[i] = spikes.to(device)
                self.soma_target[i] = soma.to(device)
        finally:
            reader.shards.close()

    @property
    def num_simulations(self) -> int:
        return self.packed_input_spikes.shape[0]

    def __len__(self) -> int:
        return (self.last_epoch - self.first_epoch) * self.batches_per_epoch

    def epoch_windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(simulation, start ms) of every window of epoch `epoch`, each (batches_per_epoch, batch_size)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        shape = (self.batches_per_epoch, self.batch_size)
        which = rng.integers(self.num_simulations, size=shape)
        starts = rng.integers(self.data.ignore_first_ms, self.duration_ms - self.data.window_ms, size=shape)
        return which, starts

    def __iter__(self):
        offsets = torch.arange(self.data.window_ms, device=self.device)
        for epoch in range(self.first_epoch, self.last_epoch):
            which, starts = (torch.as_tensor(a, device=self.device) for a in self.epoch_windows(epoch))
            for i in range(self.batches_per_epoch):
                sim = which[i][:, None]
                time = starts[i][:, None] + offsets  # (B, W)
                yield self.packed_input_spikes[sim, time], self.spike_target[sim, time], self.soma_target[sim, time]

    def close(self) -> None:
        del self.packed_input_spikes, self.spike_target, self.soma_target


def training_loader(dataset: TrainingWindows, pin_memory: bool) -> DataLoader:
    """A DataLoader over whole batches (the dataset batches itself), with workers and pinned memory."""
    workers = dataset.data.loader_workers
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=dataset.data.prefetch if workers else None,
        persistent_workers=False,
    )


# --------------------------------------------------------------------------- whole simulations

@dataclass
class SplitArrays:
    """Whole simulations of a split, as arrays (n simulations, T ms)."""

    input_spikes: np.ndarray  # (n, 1278, T) bool, as stored (surrogate.inference takes this layout)
    soma_voltage: np.ndarray  # (n, T) float32 mV, as simulated
    output_spikes: np.ndarray  # (n, T) bool
    shards: list[str]  # shard file name of each simulation
    indices: np.ndarray  # (n,) index of each simulation in its shard

    @property
    def num_simulations(self) -> int:
        return self.input_spikes.shape[0]

    @property
    def duration_ms(self) -> int:
        return self.input_spikes.shape[2]


def load_split_arrays(paths, max_simulations: int = 0) -> SplitArrays:
    """The first `max_simulations` simulations (0: all) of the given shards, in shard then index order."""
    refs = first_simulations(paths, max_simulations)
    if not refs:
        raise DatasetError("no simulations in the given shards")
    durations = {ref.duration_ms for ref in refs}
    if len(durations) != 1:
        raise DatasetError(f"simulations of different durations ({sorted(durations)} ms) cannot be stacked")
    inputs, soma, spikes = [], [], []
    by_shard: dict[str, list[int]] = {}
    for ref in refs:
        by_shard.setdefault(ref.shard, []).append(ref.index)
    for shard, indices in by_shard.items():
        with open_shard(shard) as f:
            for i in indices:
                inputs.append(f["input_spikes"][i])
                soma.append(np.asarray(f["soma_voltage"][i], dtype=np.float32))
                spikes.append(np.asarray(f["output_spikes"][i], dtype=bool))
    return SplitArrays(
        input_spikes=np.stack(inputs),
        soma_voltage=np.stack(soma),
        output_spikes=np.stack(spikes),
        shards=[Path(ref.shard).name for ref in refs],
        indices=np.array([ref.index for ref in refs]),
    )
