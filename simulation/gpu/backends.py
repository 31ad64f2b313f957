"""Compile the engine's program and call it: CUDA through CuPy (NVRTC), or the CPU twin.

The CPU twin is the same source compiled by the system's C++ compiler into a shared library
(cached under build/gpu_engine/<sha256 of the source and compiler>/) and called with ctypes,
which releases the GIL, so cells can run on several threads. CI checks the engine's
numerics against NEURON with it; on a GPU machine the CUDA kernel is checked against it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..paths import PROJECT_ROOT
from .layout import source

BUILD_DIR = PROJECT_ROOT / "build" / "gpu_engine"
CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-fno-fast-math")


@dataclass(frozen=True)
class LaunchConfig:
    """The CUDA kernel's launch shape (timestep.h): what it changes is speed, never a result.

    A block serves `cells_per_block` cells; each cell's nodes are shared among `node_groups`
    threads (a warp holds 32 / cells_per_block node groups, so a block has node_groups x
    cells_per_block threads); the compiler keeps registers so that `blocks_per_multiprocessor`
    blocks can be resident at once. Which shape is fastest is measured (bench/gpu_simulation.py).
    """

    cells_per_block: int
    node_groups: int
    blocks_per_multiprocessor: int

    def __post_init__(self):
        if self.cells_per_block not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"cells_per_block must divide a warp (1, 2, 4, ... 32), got {self.cells_per_block}")
        if self.node_groups < 1 or self.node_groups % (32 // self.cells_per_block):
            raise ValueError(f"node_groups must be a multiple of {32 // self.cells_per_block} "
                             f"(node groups per warp at {self.cells_per_block} cells per block), got {self.node_groups}")
        if self.threads_per_block > 1024 or self.blocks_per_multiprocessor < 1:
            raise ValueError(f"a block of {self.threads_per_block} threads, {self.blocks_per_multiprocessor} per "
                             f"multiprocessor, cannot be launched")

    @property
    def warps(self) -> int:
        return self.node_groups * self.cells_per_block // 32

    @property
    def threads_per_block(self) -> int:
        return self.node_groups * self.cells_per_block

    @property
    def label(self) -> str:  # "8x32/2": cells per block x node groups / blocks per multiprocessor
        return f"{self.cells_per_block}x{self.node_groups}/{self.blocks_per_multiprocessor}"

    @classmethod
    def parse(cls, text: str) -> "LaunchConfig":
        """From its label, e.g. "4x64/4"."""
        try:
            shape, blocks = text.split("/")
            cells, groups = shape.split("x")
            return cls(int(cells), int(groups), int(blocks))
        except ValueError as err:
            raise ValueError(f"launch shape {text!r}: expected CELLSxGROUPS/BLOCKS, e.g. 8x32/2 ({err})") from None


# The fastest shape measured at each precision (bench/results/gpu_simulation.json, "launch"):
# in float32, 8 cells x 64 node groups at 2 blocks per multiprocessor keep twice the warps of
# 8x32/2 resident, which hides more of the latency of the state loads, the kernel's main stall
# (Nsight Compute: 54 % of stalls wait on device memory at 8x32/2); in float64 the node arrays of
# such blocks do not fit shared memory, and 8x32/2 is the shape measured.
DEFAULT_LAUNCH = {"float32": LaunchConfig(8, 64, 2), "float64": LaunchConfig(8, 32, 2)}


# --------------------------------------------------------------------------- CPU twin

def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise ConfigError("the GPU engine's CPU twin needs a C++ compiler (g++); none was found")
    return compiler


def build_cpu_library(precision: str, class_masks=(0,)) -> Path:
    """Compile (once per source and compiler) and return the CPU twin's shared library."""
    code = source(precision, class_masks)
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256("\n".join([code, *version, *CXX_FLAGS]).encode()).hexdigest()[:24]
    library = BUILD_DIR / key / "engine.so"
    if library.is_file():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        source_path = Path(tmp) / "engine.cpp"
        source_path.write_text(code)
        built = Path(tmp) / "engine.so"
        result = subprocess.run([compiler, *CXX_FLAGS, str(source_path), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling the GPU engine's CPU twin failed:\n{result.stderr[-4000:]}")
        os.replace(built, library)  # atomic: a concurrent build never sees half a library
    return library


class CPUBackend:
    """The CPU twin: numpy arrays, ctypes calls."""

    name = "cpu"
    cell_multiple = 1

    def __init__(self, precision: str, class_masks=(0,)):
        import numpy as np

        self.np = np
        self.library = ctypes.CDLL(str(build_cpu_library(precision, class_masks)))
        i64, ptr = ctypes.c_longlong, ctypes.c_void_p
        self.library.cpu_initialize.argtypes = [ptr, ptr, i64, i64]
        self.library.cpu_advance.argtypes = [ptr, ptr, i64, i64, i64, i64]
        self.threads = 1

    def to_device(self, array):
        return self.np.ascontiguousarray(array)

    def to_host(self, array):
        return array

    def zeros(self, shape, dtype):
        return self.np.zeros(shape, dtype=dtype)

    @staticmethod
    def address(array) -> int:
        return array.ctypes.data

    def struct(self, record):
        return record.copy()  # kept alive by the caller; its address is passed

    def _run(self, function, model, batch, n_cells, *extra):
        from concurrent.futures import ThreadPoolExecutor

        m, b = model.ctypes.data, batch.ctypes.data
        threads = max(1, min(self.threads, n_cells))
        bounds = [n_cells * k // threads for k in range(threads + 1)]
        if threads == 1:
            function(m, b, 0, n_cells, *extra)
            return
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda k: function(m, b, bounds[k], bounds[k + 1], *extra), range(threads)))

    def initialize(self, model, batch, n_cells):
        self._run(self.library.cpu_initialize, model, batch, n_cells)

    def advance(self, model, batch, n_cells, ms_begin, ms_end):
        self._run(self.library.cpu_advance, model, batch, n_cells, ms_begin, ms_end)

    def synchronize(self):
        pass

    def context(self):
        import contextlib

        return contextlib.nullcontext()


# --------------------------------------------------------------------------- CUDA

NODE_ARRAYS = ("auto", "shared", "global")  # where the CUDA kernel keeps v, rhs and d (timestep.h)


class CUDABackend:
    """One GPU through CuPy: the program compiled by NVRTC for one launch shape (LaunchConfig).

    fast_math compiles with --use_fast_math (SolverConfig.gpu_math = "fast"): float32 exp, log,
    pow and division by the hardware's approximations (float64 arithmetic is unchanged by it),
    1.26x faster on an H200 with the same fidelity figures (bench/results/gpu_simulation.json).

    node_arrays: "shared" keeps each block's node arrays (v, rhs, d: 3 x n_nodes x
    cells_per_block values) in shared memory during a launch, "global" in device memory,
    "auto" shared where the launch shape's resident blocks (at least two) fit a
    multiprocessor's shared memory (float32 at 8 cells per block on an H100 / H200).
    """

    name = "cuda"

    def __init__(self, precision: str, launch: LaunchConfig, class_masks=(0,), device: int = 0,
                 n_nodes: int = 0, node_arrays: str = "auto", fast_math: bool = False):
        try:
            import cupy
        except ImportError:
            raise ConfigError("[solver] method = \"gpu\" needs CuPy on a machine with an NVIDIA GPU "
                              "(pip install -e '.[gpu]'); none was found") from None
        self.cp = cupy
        try:
            self.device = cupy.cuda.Device(device)
            self.device.use()
            name = cupy.cuda.runtime.getDeviceProperties(device)["name"].decode()
        except cupy.cuda.runtime.CUDARuntimeError as err:
            raise ConfigError(f"[solver] method = \"gpu\": no usable CUDA device ({err})") from None
        self.device_name = name
        self.launch = launch
        self.cell_multiple = launch.cells_per_block  # batches are padded to whole blocks
        if node_arrays not in NODE_ARRAYS:
            raise ValueError(f"node_arrays must be one of {NODE_ARRAYS}, got {node_arrays!r}")
        shared_bytes = 3 * n_nodes * launch.cells_per_block * (8 if precision == "float64" else 4)
        properties = cupy.cuda.runtime.getDeviceProperties(device)
        if node_arrays == "shared" and shared_bytes > properties["sharedMemPerBlockOptin"]:
            raise ValueError(f"the node arrays need {shared_bytes} bytes of shared memory per block; "
                             f"{name} has {properties['sharedMemPerBlockOptin']}")
        if node_arrays == "auto":  # shared where the resident blocks fit (1 KB per block is the system's)
            resident = max(2, launch.blocks_per_multiprocessor)
            fits = resident * (shared_bytes + 1024) <= properties["sharedMemPerMultiprocessor"]
            node_arrays = "shared" if fits else "global"
        self.node_arrays = node_arrays
        self.shared_bytes = shared_bytes if self.node_arrays == "shared" else 0
        # the engine's own stream: several engines (settings) can run side by side
        self.stream = cupy.cuda.Stream(non_blocking=True)
        code = source(precision, class_masks, nodes_in_shared_memory=self.node_arrays == "shared",
                      cells_per_block=launch.cells_per_block, threads_per_block=launch.threads_per_block,
                      blocks_per_multiprocessor=launch.blocks_per_multiprocessor)
        self.module = cupy.RawModule(code=code, options=("-std=c++17",) + (("--use_fast_math",) if fast_math else ()))
        self.initialize_kernel = self.module.get_function("gpu_initialize")
        self.advance_kernel = self.module.get_function("gpu_advance")
        if self.shared_bytes:
            self.advance_kernel.max_dynamic_shared_size_bytes = self.shared_bytes  # above 48 KiB needs opting in

    def to_device(self, array):
        with self.stream:
            return self.cp.asarray(array)

    def to_host(self, array):
        with self.stream:
            return self.cp.asnumpy(array, stream=self.stream)

    def zeros(self, shape, dtype):
        with self.stream:
            return self.cp.zeros(shape, dtype=dtype)

    @staticmethod
    def address(array) -> int:
        return array.data.ptr

    def struct(self, record):
        return record.copy()  # copied into the module's constant memory at each launch

    def _set_constant(self, name: str, record) -> None:
        symbol = self.module.get_global(name)
        symbol.copy_from_host_async(record.ctypes.data, record.nbytes, self.stream)
        self._pending = record  # the host bytes must live until the copy ran (synchronize)

    def _grid(self, n_cells):
        cells = self.launch.cells_per_block
        if n_cells % cells:
            raise ValueError(f"a CUDA batch holds a multiple of {cells} cells, got {n_cells}")
        return (n_cells // cells,), (32, self.launch.warps)

    def initialize(self, model, batch, n_cells):
        self._set_constant("c_model", model)
        self._set_constant("c_batch", batch)
        self.initialize_kernel(*self._grid(n_cells), (), stream=self.stream)
        self.stream.synchronize()

    def advance(self, model, batch, n_cells, ms_begin, ms_end):
        import numpy as np

        self._set_constant("c_model", model)
        self._set_constant("c_batch", batch)
        self.advance_kernel(*self._grid(n_cells), (np.int64(ms_begin), np.int64(ms_end)), stream=self.stream,
                            shared_mem=self.shared_bytes)

    def synchronize(self):
        self.stream.synchronize()

    def context(self):
        return self.stream  # CuPy's current stream is per thread: engines in threads run side by side


def make_backend(kind: str, precision: str, class_masks, launch: LaunchConfig, n_nodes: int = 0,
                 node_arrays: str = "auto", fast_math: bool = False):
    """"cuda" (a GPU through CuPy) or "cpu" (the CPU twin), compiled for a cell's node classes.

    The CPU twin ignores the launch shape and has no fast math: with fast_math it computes
    exactly, as "exact" does.
    """
    if kind == "cuda":
        return CUDABackend(precision, launch, class_masks, n_nodes=n_nodes, node_arrays=node_arrays,
                           fast_math=fast_math)
    if kind == "cpu":
        return CPUBackend(precision, class_masks)
    raise ValueError(f"backend must be 'cuda' or 'cpu', got {kind!r}")
