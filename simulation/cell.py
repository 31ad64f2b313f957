"""The Hay et al. (2011) layer-5b pyramidal cell as NeuronIO built it.

Construction follows the NeuronIO template (L5PC_MODEL_SPEC.md 1.1-1.3), in its order:

    import cell1.asc -> nseg = 1 + 2*int(L/40) -> axon replaced by 2 x 30 um stubs
    -> soma area queried -> biophysics (a data file under biophysics/, spec section 3)

The dendritic segments, basal `dend[0..83]` then apical `apic[0..108]`, each section's
segments in increasing x, are the 639 synapse sites of the NeuronIO input raster; their
geometry is kept in a `SegmentTable`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, MorphologyError
from .morphology import check_morphology, path_neuron_can_read

BIOPHYSICS_DIR = Path(__file__).resolve().parent / "biophysics"
BIOPHYSICS_SETS = ("neuronio", "hay2011")  # neuronio = biophys5b (default), hay2011 = biophys3

MAX_SEGMENT_LENGTH_UM = 40.0  # nseg rule, spec 1.2
AXON_STUB_LENGTH_UM = 30.0  # spec 1.3
AXON_STUB_DIAM_UM = 1.0
REGIONS = ("soma", "axon", "basal", "apical")


def nseg_for_length(length_um: float) -> int:
    """NeuronIO's nseg rule (spec 1.2): always odd, segments at most ~40 um long."""
    return 1 + 2 * int(length_um / MAX_SEGMENT_LENGTH_UM)


# --------------------------------------------------------------------------- segment table

@dataclass(frozen=True)
class SegmentTable:
    """The 639 dendritic segments in NeuronIO order (all arrays have one entry per segment)."""

    index: np.ndarray  # 0..638, the row of the excitatory synapse in input_spikes
    section: np.ndarray  # str, e.g. "dend[0]", "apic[50]"
    x: np.ndarray  # segment centre, (2k - 1) / (2 nseg)
    region: np.ndarray  # "basal" or "apical"
    distance_um: np.ndarray  # path distance from soma(0.5) to the segment centre
    length_um: np.ndarray  # L / nseg

    @property
    def is_basal(self) -> np.ndarray:
        return self.region == "basal"

    @property
    def n_segments(self) -> int:
        return len(self.index)

    def __len__(self) -> int:
        return self.n_segments


# --------------------------------------------------------------------------- biophysics files

def load_biophysics(name: str) -> dict[str, Any]:
    """Read biophysics/<name>.toml (layout described at the top of neuronio.toml)."""
    if name not in BIOPHYSICS_SETS:
        raise ConfigError(f"unknown biophysics {name!r} (known: {', '.join(BIOPHYSICS_SETS)})")
    path = BIOPHYSICS_DIR / f"{name}.toml"
    with open(path, "rb") as f:
        table = tomllib.load(f)
    unknown = sorted(set(table.get("region", {})) - set(REGIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown region {unknown[0]!r} (known: {', '.join(REGIONS)})")
    return table


def distributed_value(rule: dict[str, Any], distance_um: float, longest_path_um: float) -> float:
    """One segment's value of a [[distribution]] rule at path distance d from soma(0.5) (spec 3.2, 3.3)."""
    if rule["kind"] == "exponential":
        # g(d) = scale * (offset + amplitude * exp(rate * min(d / L_max, cap)))
        normalised = distance_um / longest_path_um
        if "cap" in rule:
            normalised = min(normalised, rule["cap"])
        value = rule["scale"] * (rule["offset"] + rule["amplitude"] * np.exp(rule["rate"] * normalised))
    elif rule["kind"] == "step":
        # strict inequalities on both sides, as Hay's step rule
        inside = rule["start_um"] < distance_um < rule["end_um"]
        value = rule["inside"] if inside else rule["outside"]
    else:
        raise ConfigError(f"unknown distribution kind {rule['kind']!r} (known: exponential, step)")
    # the original writes the values through a "%.10f" format string (spec 3.2 item 4)
    return round(float(value), 10)


# --------------------------------------------------------------------------- the cell

class _ImportedSections:
    """Receives the sections of Import3d's instantiate(); its str() prefixes the section names."""

    def __init__(self, label: str):
        self._label = label

    def __str__(self) -> str:
        return self._label


class L5PCCell:
    """The L5PC of NeuronIO: `soma`, `axon`, `basal`, `apical` and `all_sections` are lists of sections.

    `biophysics` names a file under simulation/biophysics/ ("neuronio" = biophys5b, "hay2011" =
    biophys3). `celsius` sets NEURON's global temperature, which only enters the Nernst eca (spec 1.6).
    """

    _count = 0  # distinct section-name prefixes when a process builds several cells

    def __init__(self, morphology: str | Path, biophysics: str = "neuronio", celsius: float = 6.3):
        from neuron import h

        from .mechanisms import load_mechanisms

        self.biophysics_name = biophysics
        self.morphology = Path(morphology)
        self._biophysics = load_biophysics(biophysics)  # fail on a bad name before any NEURON work
        load_mechanisms()
        h.load_file("stdrun.hoc")
        h.celsius = celsius

        self._import_morphology(self.morphology)  # 1. import
        for sec in self.all_sections:  # 2. nseg rule
            sec.nseg = nseg_for_length(sec.L)
        self._replace_axon()  # 3. axon stubs
        self.soma_area_um2 = sum(seg.area() for sec in self.soma for seg in sec)  # 4. 3-D points -> diameters
        self.longest_apical_path_um = self._longest_apical_path()
        self._apply_biophysics(self._biophysics)  # 5-6. distances from soma(0.5), biophysics
        self.segments = self._segment_table()

    # -- construction steps ------------------------------------------------------------

    def _import_morphology(self, path: Path) -> None:
        from neuron import h

        check_morphology(path)  # NEURON hangs or crashes on some malformed files
        h.load_file("import3d.hoc")
        reader = h.Import3d_Neurolucida3() if path.suffix.lower() == ".asc" else h.Import3d_SWC_read()
        reader.quiet = 1
        try:
            with path_neuron_can_read(path) as readable:
                reader.input(str(readable))
            L5PCCell._count += 1
            imported = _ImportedSections(f"L5PC{L5PCCell._count - 1}")
            h.Import3d_GUI(reader, 0).instantiate(imported)
        except (RuntimeError, UnicodeDecodeError) as err:  # hoc errors surface as RuntimeError
            raise MorphologyError(f"morphology {path} could not be read: {err}") from None
        sections = {name: list(getattr(imported, name, [])) for name in ("soma", "dend", "apic", "axon")}
        if len(sections["soma"]) == 0 or len(sections["dend"]) + len(sections["apic"]) == 0:
            raise MorphologyError(f"morphology {path}: no soma or no dendrites were found")
        self.soma = sections["soma"]
        self.basal = sections["dend"]
        self.apical = sections["apic"]
        self.axon = sections["axon"]
        self._imported = imported  # owns Import3d's own references
        # "dend[3]" rather than "L5PC0.dend[3]": the names the NeuronIO tables use
        self._short_names = {}
        for prefix, secs in (("soma", self.soma), ("dend", self.basal), ("apic", self.apical)):
            for i, sec in enumerate(secs):
                self._short_names[sec] = f"{prefix}[{i}]"

    def _replace_axon(self) -> None:
        """Drop the reconstructed axon; attach two 30 x 1 um stubs to soma(0.5) (spec 1.3)."""
        from neuron import h

        for sec in self.axon:
            h.delete_section(sec=sec)
        self._imported.axon = []
        self._imported.all = []
        self.axon = []
        for i in range(2):
            stub = h.Section(name=f"axon[{i}]", cell=self._imported)
            stub.L, stub.diam = AXON_STUB_LENGTH_UM, AXON_STUB_DIAM_UM
            stub.nseg = nseg_for_length(stub.L)
            self.axon.append(stub)
            self._short_names[stub] = f"axon[{i}]"
        self.axon[0].connect(self.soma[0](0.5), 0)
        self.axon[1].connect(self.axon[0](1), 0)

    def _longest_apical_path(self) -> float:
        """Longest path from soma(0.5) (= apic[0](0)) to the distal end of a terminal apical section (spec 3.2)."""
        from neuron import h

        origin = self.soma[0](0.5)
        tips = [sec for sec in self.apical if len(sec.children()) == 0]
        return max(h.distance(origin, sec(1.0)) for sec in tips)

    def _rule_distances(self, sec) -> list[float]:
        """Distance of each segment for the gradient rules: centres, but the last segment at x = 1 (spec 3.2)."""
        from neuron import h

        origin = self.soma[0](0.5)
        xs = [seg.x for seg in sec]
        xs[-1] = 1.0
        return [h.distance(origin, sec(x)) for x in xs]

    def _apply_biophysics(self, biophysics: dict[str, Any]) -> None:
        regions = {"soma": self.soma, "axon": self.axon, "basal": self.basal, "apical": self.apical}
        # every section first gets pas with cm = 1, Ra = 100, e_pas = -90 (spec 1.4)
        self._set_parameters(self.all_sections, biophysics.get("all", {}), "all")
        for region, table in biophysics.get("region", {}).items():
            self._set_parameters(regions[region], table, f"region.{region}")
        for rule in biophysics.get("distribution", []):
            parameter = rule["parameter"]
            for sec in regions[rule["region"]]:
                for seg, distance in zip(sec, self._rule_distances(sec)):
                    setattr(seg, parameter, distributed_value(rule, distance, self.longest_apical_path_um))

    def _set_parameters(self, sections, table: dict[str, Any], where: str) -> None:
        for sec in sections:
            for mechanism in table.get("insert", []):
                try:
                    sec.insert(mechanism)
                except ValueError:
                    raise ConfigError(f"biophysics {self.biophysics_name} [{where}]: unknown mechanism {mechanism!r}") from None
            for name, value in table.items():
                if name == "insert":
                    continue
                try:
                    setattr(sec, name, value)  # section-wide: sets every segment
                except (AttributeError, NameError, LookupError, ValueError):
                    raise ConfigError(f"biophysics {self.biophysics_name} [{where}]: cannot set {name} in {self.section_name(sec)}") from None

    def _segment_table(self) -> SegmentTable:
        from neuron import h

        origin = self.soma[0](0.5)
        rows = []
        for region, sections in (("basal", self.basal), ("apical", self.apical)):
            for sec in sections:
                for seg in sec:
                    rows.append((self._short_names[sec], seg.x, region, h.distance(origin, seg), sec.L / sec.nseg))
        section, x, region, distance, length = zip(*rows)
        return SegmentTable(
            index=np.arange(len(rows)),
            section=np.array(section),
            x=np.array(x, dtype=np.float64),
            region=np.array(region),
            distance_um=np.array(distance, dtype=np.float64),
            length_um=np.array(length, dtype=np.float64),
        )

    # -- queries ---------------------------------------------------------------------

    @property
    def all_sections(self) -> list:
        return [*self.soma, *self.axon, *self.basal, *self.apical]

    def section_name(self, sec) -> str:
        """NeuronIO's name of a section of this cell, e.g. "apic[50]"."""
        return self._short_names[sec]

    def section(self, name: str):
        """The section called e.g. "apic[50]", "dend[3]", "soma[0]", "axon[1]"."""
        match = re.fullmatch(r"(soma|dend|apic|axon)\[(\d+)\]", name.strip())
        lists = {"soma": self.soma, "dend": self.basal, "apic": self.apical, "axon": self.axon}
        if match is None or int(match.group(2)) >= len(lists[match.group(1)]):
            raise ConfigError(f"no section {name!r} in this cell (soma[0], dend[0..{len(self.basal) - 1}], "
                              f"apic[0..{len(self.apical) - 1}], axon[0..{len(self.axon) - 1}])")
        return lists[match.group(1)][int(match.group(2))]

    def dendritic_segments(self) -> list:
        """The 639 NEURON segments in SegmentTable order (basal sections, then apical)."""
        return [seg for sec in (*self.basal, *self.apical) for seg in sec]

    def nexus_segment(self, section: str = "apic[50]", x: float = 0.9):
        """NeuronIO's nexus recording site, apic[50](0.9) (spec 6.2)."""
        return self.section(section)(x)

    def __repr__(self) -> str:
        return (f"L5PCCell({self.morphology.name}, biophysics={self.biophysics_name!r}, "
                f"{self.segments.n_segments} dendritic segments)")
