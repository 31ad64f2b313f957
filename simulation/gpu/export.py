"""The cell as NEURON discretised it, exported for the GPU engine (one source of truth).

Nothing here recomputes geometry: every number is read from the NEURON-built cell of
simulation/run.py after NEURON's own discretisation, so the GPU engine and NEURON can never
simulate different cells.

Nodes. NEURON solves one voltage per node: the root node (soma(0)), one node per segment
centre, and a zero-area node at the distal end (x = 1) of every section. They are exported
in NEURON's node order (`seg.node_index()`), in which every parent precedes its children.

Matrix. For node i with parent p, NEURON's connection_coef (src/nrnoc/treeset.cpp) sets

    a_i = -100 / (ri_i * area_p),   b_i = -100 / (ri_i * area_i)      (S/cm2, area in um2)

where ri_i (MOhm) is the axial resistance between i and p (`seg.ri()`, NEURON's NODERINV)
and zero-area nodes count as area 100 (so their equation is a current balance in nA).
Node i's equation is then (cm_i / dt + sum g) dv_i - b_i dv_p - sum_children a_c dv_c = rhs_i.

Mechanisms. For every channel in CHANNELS, a per-node density (0 where not inserted) and
whether it is inserted; reversal potentials, Ih's and CaDynamics_E2's parameters likewise.
Synapses: the node of every AmpaNmda and GabaA point process and its parameters, in
input_spikes row order (row k < n: excitatory synapse k; n + k: inhibitory synapse k).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

# The channels of simulation/mechanisms/, in NEURON's mechanism-type order (the order in
# which nrnivmodl registers them, alphabetical). State updates run in this order, which
# matters once: CaDynamics_E2 updates cai before SK_E2 reads it, as in NEURON.
# name -> (ion it carries or None, gating states, RANGE parameters exported per node)
CHANNELS: dict[str, tuple[str | None, tuple[str, ...], tuple[str, ...]]] = {
    "CaDynamics_E2": (None, ("cai",), ("gamma", "decay", "depth", "minCai")),
    "Ca_HVA": ("ca", ("m", "h"), ("gbar",)),
    "Ca_LVAst": ("ca", ("m", "h"), ("gbar",)),
    "Ih": (None, ("m",), ("gbar", "ehcn", "vshift")),
    "Im": ("k", ("m",), ("gbar",)),
    "K_Pst": ("k", ("m", "h"), ("gbar",)),
    "K_Tst": ("k", ("m", "h"), ("gbar",)),
    "NaTa_t": ("na", ("m", "h"), ("gbar",)),
    "NaTs2_t": ("na", ("m", "h"), ("gbar",)),
    "Nap_Et2": ("na", ("m", "h"), ("gbar",)),
    "SK_E2": ("k", ("z",), ("gbar",)),
    "SKv3_1": ("k", ("m",), ("gbar",)),
}
# GLOBAL (not RANGE) parameters of the .mod files, read from NEURON as h.<name>_<mechanism>
CHANNEL_GLOBALS = {"Ih": ("vhalf",)}
EXCITATORY_PARAMETERS = ("gmax", "e", "mg", "factor_AMPA", "factor_NMDA",
                         "tau_r_AMPA", "tau_d_AMPA", "tau_r_NMDA", "tau_d_NMDA")
INHIBITORY_PARAMETERS = ("gmax", "e", "factor", "tau_r", "tau_d")
ZERO_AREA_UM2 = 100.0  # NEURON's NODEAREA of a zero-area node (src/neuron/container/node.hpp)


@dataclass
class CellExport:
    """Arrays of one cell, per node (n_nodes long) unless said otherwise."""

    parent: np.ndarray  # int32, -1 for the root
    area_um2: np.ndarray  # NEURON's NODEAREA: segment area, 100 for zero-area nodes
    a: np.ndarray  # effect of the node's voltage on its parent's equation (S/cm2)
    b: np.ndarray  # effect of the parent's voltage on the node's equation (S/cm2)
    cm: np.ndarray  # uF/cm2, 0 at zero-area nodes (no membrane)
    node_name: np.ndarray  # str, e.g. "apic[50](0.8333)" or "apic[50](1)"
    pas_g: np.ndarray  # S/cm2
    pas_e: np.ndarray  # mV
    ena: np.ndarray  # mV (NaN where the node has no na ion)
    ek: np.ndarray
    cao: np.ndarray  # mM (NaN where the node has no ca ion)
    inserted: dict[str, np.ndarray]  # channel -> bool per node
    parameters: dict[str, dict[str, np.ndarray]]  # channel -> parameter -> value per node (0 where absent)
    channel_globals: dict[str, dict[str, float]]
    excitatory_node: np.ndarray  # int32, per excitatory synapse
    excitatory: dict[str, np.ndarray]  # EXCITATORY_PARAMETERS, per excitatory synapse
    inhibitory_node: np.ndarray
    inhibitory: dict[str, np.ndarray]
    soma_node: int
    nexus_node: int
    segment_nodes: np.ndarray  # int32, the 639 dendritic segments in SegmentTable order
    cai0_mM: float  # NEURON's cai0_ca_ion: initial cai (CaDynamics_E2 has no INITIAL block)
    celsius: float
    faraday: float  # C/mol, NEURON's FARADAY
    gas_constant: float  # J/(mol K), NEURON's R
    v_init_mV: float
    notes: dict = field(default_factory=dict)

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def n_inputs(self) -> int:
        return len(self.excitatory_node) + len(self.inhibitory_node)


def export_cell(simulator) -> CellExport:
    """Read the cell of an L5PCSimulator (simulation/run.py) as NEURON discretised it."""
    from neuron import h

    cell = simulator.cell
    sections = cell.all_sections
    # the node order of the simulator's runs (run.py solves with cache_efficient, which orders
    # parents before children); the initialisation also runs the synapses' INITIAL blocks,
    # which set their peak factors
    h.cvode.cache_efficient(1)
    h.finitialize(simulator.config.cell.v_init_mV)
    roots = [sec for sec in sections if sec.parentseg() is None]
    if len(roots) != 1:
        raise ConfigError(f"the GPU engine simulates one connected cell; this one has {len(roots)} root sections")

    # nodes: the root, every segment centre, every section's x = 1 end
    parent_of, area, ri, cm, names, segment_of = {}, {}, {}, {}, {}, {}
    root = roots[0]
    root_index = root(0).node_index()
    parent_of[root_index], area[root_index], ri[root_index], cm[root_index] = -1, ZERO_AREA_UM2, np.inf, 0.0
    names[root_index] = f"{cell.section_name(root)}(0)"
    for sec in sections:
        connection = sec.parentseg()
        previous = root_index if connection is None else connection.node_index()
        for seg in sec:
            node = seg.node_index()
            parent_of[node], area[node], ri[node], cm[node] = previous, seg.area(), seg.ri(), seg.cm
            names[node], segment_of[node] = f"{cell.section_name(sec)}({seg.x:.4g})", seg
            previous = node
        end = sec(1).node_index()
        parent_of[end], area[end], ri[end], cm[end] = previous, ZERO_AREA_UM2, sec(1).ri(), 0.0
        names[end] = f"{cell.section_name(sec)}(1)"
        if sec.rallbranch != 1:
            raise ConfigError(f"{cell.section_name(sec)}: rallbranch {sec.rallbranch} is not supported by the GPU engine")

    # NEURON's node order; other cells in the same process (tests build several) take other
    # indices of the same arrays, so number this cell's nodes 0..n-1 in that order
    order = np.array(sorted(parent_of))
    n = len(order)
    ours = {int(index): k for k, index in enumerate(order)}
    parent = np.array([-1 if parent_of[i] < 0 else ours[parent_of[i]] for i in order], dtype=np.int32)
    if parent[0] != -1 or not np.all(parent[1:] < np.arange(1, n)):
        raise ConfigError("NEURON's node order does not put parents before children")
    area_um2 = np.array([area[i] for i in order])
    ri_megohm = np.array([ri[i] for i in order])
    a = np.zeros(n)
    b = np.zeros(n)
    a[1:] = -1e2 / (ri_megohm[1:] * area_um2[parent[1:]])
    b[1:] = -1e2 / (ri_megohm[1:] * area_um2[1:])

    # membrane: passive, reversal potentials, channels (absent -> 0, ions absent -> NaN)
    def per_segment(read, absent=0.0):
        values = np.full(n, absent, dtype=np.float64)
        for node, seg in segment_of.items():
            value = read(seg)
            if value is not None:
                values[ours[node]] = value
        return values

    def node_of(seg) -> int:
        return ours[seg.node_index()]

    def ion_value(name, ion):
        return lambda seg: getattr(seg, name) if seg.sec.has_membrane(f"{ion}_ion") else None

    inserted, parameters = {}, {}
    for channel, (_, _, names_) in CHANNELS.items():
        inserted[channel] = per_segment(lambda seg, c=channel: 1.0 if seg.sec.has_membrane(c) else None) > 0
        parameters[channel] = {
            p: per_segment(lambda seg, c=channel, p=p: getattr(getattr(seg, c), p) if seg.sec.has_membrane(c) else None)
            for p in names_
        }
    uses_ca = inserted["Ca_HVA"] | inserted["Ca_LVAst"] | inserted["SK_E2"]
    if np.any(uses_ca & ~inserted["CaDynamics_E2"]):
        raise ConfigError("a compartment has Ca channels without CaDynamics_E2; the GPU engine needs cai to be a state")
    known = set(CHANNELS) | {"pas", "ca_ion", "na_ion", "k_ion"}
    for sec in sections:
        for mechanism in sec.psection()["density_mechs"]:
            if mechanism not in known:
                raise ConfigError(f"{cell.section_name(sec)} has mechanism {mechanism!r}, which the GPU engine does not implement")

    excitatory_node = np.array([node_of(syn.get_segment()) for syn in simulator.excitatory], dtype=np.int32)
    inhibitory_node = np.array([node_of(syn.get_segment()) for syn in simulator.inhibitory], dtype=np.int32)
    for kind, nodes in (("excitatory", excitatory_node), ("inhibitory", inhibitory_node)):
        if len(np.unique(nodes)) != len(nodes):
            raise ConfigError(f"two {kind} synapses share a compartment; the GPU engine holds one of each kind per node")

    excitatory = {p: np.array([getattr(syn, p) for syn in simulator.excitatory], dtype=np.float64) for p in EXCITATORY_PARAMETERS}
    inhibitory = {p: np.array([getattr(syn, p) for syn in simulator.inhibitory], dtype=np.float64) for p in INHIBITORY_PARAMETERS}
    for netcon in simulator.netcons:
        if netcon.weight[0] != 1.0:
            raise ConfigError("the GPU engine delivers unit-weight input events; a NetCon has another weight")

    return CellExport(
        parent=parent, area_um2=area_um2, a=a, b=b, cm=np.array([cm[i] for i in order]),
        node_name=np.array([names[i] for i in order]),
        pas_g=per_segment(lambda seg: seg.pas.g if seg.sec.has_membrane("pas") else None),
        pas_e=per_segment(lambda seg: seg.pas.e if seg.sec.has_membrane("pas") else None),
        ena=per_segment(ion_value("ena", "na"), np.nan), ek=per_segment(ion_value("ek", "k"), np.nan),
        cao=per_segment(ion_value("cao", "ca"), np.nan),
        inserted=inserted, parameters=parameters,
        channel_globals={c: {g: float(getattr(h, f"{g}_{c}")) for g in gs} for c, gs in CHANNEL_GLOBALS.items()},
        excitatory_node=excitatory_node, excitatory=excitatory,
        inhibitory_node=inhibitory_node, inhibitory=inhibitory,
        soma_node=node_of(simulator.soma_site), nexus_node=node_of(simulator.nexus_site),
        segment_nodes=np.array([node_of(seg) for seg in simulator.cell.dendritic_segments()], dtype=np.int32),
        cai0_mM=float(h.cai0_ca_ion), celsius=float(h.celsius), faraday=float(h.FARADAY), gas_constant=float(h.R),
        v_init_mV=float(simulator.config.cell.v_init_mV),
    )
