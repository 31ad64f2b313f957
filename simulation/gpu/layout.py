"""The C structs shared by Python and the C/CUDA code, written from one field list.

`Model` holds what every copy of the cell shares (the exported cell, dt, the recording sites);
`Batch` holds one batch of cells: their states, input events and output buffers. Every field
is 8 bytes (a long long, a double or a pointer), so a numpy structured array with the same
fields in the same order has the C struct's memory layout, with no padding to agree on.

`source(precision, class_masks)` is the whole program: a prelude (precision, math functions,
the structs, the cell's node classes) followed by mechanisms.h, timestep.h and kernels.cu.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .export import CHANNEL_GLOBALS, CHANNELS

SOURCE_DIR = Path(__file__).resolve().parent
SOURCE_FILES = ("mechanisms.h", "timestep.h", "kernels.cu")

# kinds: "int" (long long), "double", "int*" (int32 array), "real*" (the engine's precision),
# "float*", "i64*", "u16*"
MODEL_FIELDS: list[tuple[str, str]] = [
    ("n_nodes", "int"), ("n_excitatory", "int"), ("n_inhibitory", "int"), ("n_states", "int"),
    ("n_record", "int"), ("steps_per_ms", "int"), ("samples_per_ms", "int"),
    ("soma_node", "int"), ("nexus_node", "int"), ("second_order", "int"),
    ("dt", "double"), ("cfac", "double"), ("voltage_step_factor", "double"), ("ktf", "double"),
    ("faraday", "double"), ("v_init", "double"), ("cai0", "double"), ("spike_threshold", "double"),
    *[(f"{name}_{channel}", "double") for channel, names in CHANNEL_GLOBALS.items() for name in names],
    ("n_chains", "int"), ("n_levels", "int"),
    ("parent", "int*"), ("child_begin", "int*"), ("children", "int*"),
    ("class_begin", "int*"), ("class_nodes", "int*"), ("class_state_base", "int*"),
    ("chain_first", "int*"), ("chain_last", "int*"), ("chain_parent", "int*"),
    ("level_begin", "int*"), ("level_chains", "int*"),
    ("node_excitatory", "int*"), ("node_inhibitory", "int*"), ("record_nodes", "int*"),
    ("a", "real*"), ("b", "real*"), ("d_axial", "real*"), ("cm", "real*"), ("area", "real*"),
    ("pas_g", "real*"), ("pas_e", "real*"), ("ena", "real*"), ("ek", "real*"), ("cao", "real*"),
    *[(f"{parameter}_{channel}", "real*") for channel, (_, _, parameters) in CHANNELS.items() for parameter in parameters],
    ("exc_gmax", "real*"), ("exc_e", "real*"), ("exc_mg", "real*"), ("exc_factor_ampa", "real*"),
    ("exc_factor_nmda", "real*"), ("exc_decay_rise_ampa", "real*"), ("exc_decay_decay_ampa", "real*"),
    ("exc_decay_rise_nmda", "real*"), ("exc_decay_decay_nmda", "real*"),
    ("inh_gmax", "real*"), ("inh_e", "real*"), ("inh_factor", "real*"), ("inh_decay_rise", "real*"),
    ("inh_decay_decay", "real*"),
]

BATCH_FIELDS: list[tuple[str, str]] = [
    ("n_cells", "int"), ("duration_ms", "int"), ("chunk_begin_ms", "int"), ("max_spikes", "int"),
    ("v", "real*"), ("state", "real*"), ("excitatory_state", "real*"), ("inhibitory_state", "real*"),
    ("rhs", "real*"), ("d", "real*"), ("sample_last", "real*"), ("sample_before_last", "real*"),
    ("event_offsets", "i64*"), ("event_rows", "u16*"),
    ("soma_out", "float*"), ("nexus_out", "float*"), ("segment_out", "float*"),
    ("spike_count", "int*"), ("spike_sample", "int*"),
]

_C_TYPES = {"int": "long long", "double": "double", "int*": "int*", "real*": "real*",
            "float*": "float*", "i64*": "const long long*", "u16*": "const unsigned short*"}
NUMPY_DTYPES = {"int*": np.int32, "float*": np.float32, "i64*": np.int64, "u16*": np.uint16}
PRECISIONS = {"float64": np.float64, "float32": np.float32}


def real_dtype(precision: str):
    return PRECISIONS[precision]


def struct_dtype(fields: list[tuple[str, str]]) -> np.dtype:
    """The numpy twin of a C struct of 8-byte fields."""
    kinds = {"int": np.int64, "double": np.float64}
    return np.dtype([(name, kinds.get(kind, np.uint64)) for name, kind in fields])


def _c_struct(name: str, fields: list[tuple[str, str]], const: bool) -> str:
    lines = [f"struct {name} {{"]
    for field_name, kind in fields:
        c_type = _C_TYPES[kind]
        if const and kind.endswith("*") and not c_type.startswith("const"):
            c_type = "const " + c_type
        lines.append(f"    {c_type} {field_name};")
    return "\n".join(lines + ["};"])


# --------------------------------------------------------------------------- node classes

# A node's mask: what it carries. Bits 0-2 below, then one bit per channel in CHANNELS order.
MEMBRANE, HAS_EXCITATORY, HAS_INHIBITORY = 1 << 0, 1 << 1, 1 << 2
CHANNEL_BITS = {channel: 1 << (3 + k) for k, channel in enumerate(CHANNELS)}
CA_ION_SLOTS = 2  # ica and dica/dv, where CaDynamics_E2 keeps a Ca pool


def node_states(mask: int) -> int:
    """State slots of a node with this mask: its channels' states in CHANNELS order, then the Ca-ion slots."""
    n = sum(len(CHANNELS[c][1]) for c, bit in CHANNEL_BITS.items() if mask & bit)
    return n + (CA_ION_SLOTS if mask & CHANNEL_BITS["CaDynamics_E2"] else 0)


def ca_ion_offset(mask: int) -> int:
    return sum(len(CHANNELS[c][1]) for c, bit in CHANNEL_BITS.items() if mask & bit)


def _class_macros(class_masks: list[int]) -> str:
    """The C twin of node_states / ca_ion_offset, and the list of node classes."""
    lines = [f"#define MEMBRANE {MEMBRANE}u", f"#define HAS_EXCITATORY {HAS_EXCITATORY}u", f"#define HAS_INHIBITORY {HAS_INHIBITORY}u"]
    lines += [f"#define HAS_{c} {bit}u" for c, bit in CHANNEL_BITS.items()]
    previous = "0"
    for channel, bit in CHANNEL_BITS.items():
        lines.append(f"#define STATE_OFFSET_{channel}(mask) ({previous})")
        previous = f"(STATE_OFFSET_{channel}(mask) + (((mask) & HAS_{channel}) ? {len(CHANNELS[channel][1])} : 0))"
    lines.append(f"#define CA_ION_OFFSET(mask) {previous}")
    lines.append(f"#define NODE_STATES(mask) (CA_ION_OFFSET(mask) + (((mask) & HAS_CaDynamics_E2) ? {CA_ION_SLOTS} : 0))")
    lines.append("#define FOR_EACH_CLASS(F) " + " ".join(f"F({k}, {mask}u)" for k, mask in enumerate(class_masks)))
    return "\n".join(lines)


def _prelude(precision: str, nodes_in_shared_memory: bool, cells_per_block: int, threads_per_block: int,
             blocks_per_multiprocessor: int) -> str:
    double = precision == "float64"
    suffix = "" if double else "f"
    math = "\n".join(f"#define r_{f} {f}{suffix}" for f in ("exp", "expm1", "log", "pow", "fabs"))
    return "\n".join([
        f"// generated by simulation/gpu/layout.py for {precision}",
        "#ifdef __CUDACC__",
        "#define HD __device__ __forceinline__",
        "#else",
        "#include <math.h>",
        "#include <string.h>",
        "#define HD static inline",
        "#endif",
        f"typedef {'double' if double else 'float'} real;",
        f"#define REAL_IS_DOUBLE {1 if double else 0}",
        f"#define CELLS_PER_BLOCK {cells_per_block}",
        f"#define THREADS_PER_BLOCK {threads_per_block}",
        f"#define BLOCKS_PER_MULTIPROCESSOR {blocks_per_multiprocessor}",
        f"#define NODES_IN_SHARED_MEMORY {int(nodes_in_shared_memory)}",
        math,
        _c_struct("Model", MODEL_FIELDS, const=True),
        _c_struct("Batch", BATCH_FIELDS, const=False),
        "",
    ])


# a floating-point literal: digits with a point and/or an exponent, not part of a name
_FLOAT_LITERAL = re.compile(r"(?<![\w.])((?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])")


def source(precision: str, class_masks: list[int] = (0,), nodes_in_shared_memory: bool = False,
           cells_per_block: int = 8, threads_per_block: int = 256, blocks_per_multiprocessor: int = 2) -> str:
    """The engine's C/CUDA program for `precision` ("float64" or "float32") and a cell's node classes.

    The rest is the CUDA kernel's launch shape (backends.LaunchConfig), which the CPU twin ignores:
    `nodes_in_shared_memory` keeps the node arrays (v, rhs, d) of a block's cells in shared
    memory for a whole launch (timestep.h, NodeArrays); `cells_per_block` and
    `threads_per_block` fix the block, and `blocks_per_multiprocessor` the register budget
    (__launch_bounds__): more resident blocks, fewer registers per thread.

    In float32, every floating-point literal gets an `f` suffix, so that no expression is
    silently promoted to double (which would cost a GPU its float throughput).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    body = "\n".join((SOURCE_DIR / name).read_text() for name in SOURCE_FILES)
    if precision == "float32":
        body = _FLOAT_LITERAL.sub(lambda m: m.group(1) + "f", body)
    prelude = _prelude(precision, nodes_in_shared_memory, cells_per_block, threads_per_block, blocks_per_multiprocessor)
    return prelude + _class_macros(list(class_masks)) + "\n" + body


def pack(fields: list[tuple[str, str]], values: dict, real, address_of) -> np.ndarray:
    """One struct as a numpy record; arrays are checked against the field's type.

    `address_of(array)` gives an array's address (numpy on the CPU, CuPy on a GPU); None stays 0.
    """
    record = np.zeros((), dtype=struct_dtype(fields))
    missing = [name for name, _ in fields if name not in values]
    if missing:
        raise KeyError(f"no value for struct field(s) {missing}")
    for name, kind in fields:
        value = values[name]
        if kind == "int":
            record[name] = int(value)
        elif kind == "double":
            record[name] = float(value)
        elif value is None:
            record[name] = 0
        else:
            expected = real if kind == "real*" else NUMPY_DTYPES[kind]
            if value.dtype != expected:
                raise TypeError(f"struct field {name}: array of {value.dtype}, expected {np.dtype(expected)}")
            record[name] = address_of(value)
    return record
