"""What a dataset is and what an output directory already holds: the plan, provenance, resume.

    plan_shards(config[, shards])       shard i holds simulations i*n .. i*n + n-1 (n = simulations_per_shard)
    dataset_attrs(config, morphology)   the provenance every shard of the dataset carries
    data_identity(config_dict)          the parts of a config that fix a shard's arrays
    inspect_output_dir(...)             which planned shards are done, which are to simulate

Resuming. A shard under its final name is complete (dataset.write_shard renames a finished
temporary file), so a re-run skips every shard that passes validation and belongs to the
same dataset; a stale temporary file of a killed run is removed; a shard that fails
validation (truncated by a copy, a full disk) is simulated again and replaced, which loses
nothing because its content is fixed by the config and the seed. A directory holding shards
of another dataset is refused: mixing two datasets in one directory would silently corrupt
every later stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.files import file_sha256, temporaries

from .config import SimulationConfig
from .errors import DatasetError, UserInputError

# Tables that do not change a shard's content: who computes it, how many shards in total
# (a dataset may grow by raising n_shards) and how hard the inputs are compressed.
NOT_PART_OF_THE_DATA = {"parallel": None, "dataset": ("n_shards", "compression_level")}


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class ShardPlan:
    """Shard `index` holds the simulations `simulation_indices` (dataset-wide indices)."""

    index: int
    simulation_indices: tuple[int, ...]

    @property
    def file_name(self) -> str:
        return f"shard_{self.index:05d}.h5"


def plan_shards(config: SimulationConfig, shards: Sequence[int] | None = None) -> list[ShardPlan]:
    """Shard i holds simulations i*n .. i*n + n - 1: a shard's content never depends on n_shards.

    `shards`: only these of the dataset's shards (-1 is the last, a dataset's test split; -2 the one before).
    """
    n, count = config.dataset.simulations_per_shard, config.dataset.n_shards
    for index in shards or ():
        if not -count <= index < count:
            raise UserInputError(f"shard {index} is not in this dataset's {count} shards "
                                 f"(0..{count - 1}, or -1 for the last)")
    wanted = range(count) if shards is None else sorted({index % count for index in shards})
    return [ShardPlan(i, tuple(range(i * n, (i + 1) * n))) for i in wanted]


# --------------------------------------------------------------------------- identity of a dataset

def data_identity(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that determine a shard's arrays.

    The config is read through today's tables first, so that a key added to a table after a
    dataset was made (e.g. [solver] scheme) counts as its default, which is what the older
    code simulated; a config that today's tables cannot read is compared as it is.
    """
    try:
        config_dict = SimulationConfig.from_dict(config_dict).to_dict()
    except UserInputError:
        pass
    identity = {}
    for table, values in config_dict.items():
        if table not in NOT_PART_OF_THE_DATA:
            identity[table] = values
        elif NOT_PART_OF_THE_DATA[table] is not None:
            identity[table] = {k: v for k, v in values.items() if k not in NOT_PART_OF_THE_DATA[table]}
    return identity


def _first_difference(expected: dict, found: dict, where: str = "", here: str = "in this config") -> str | None:
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = _first_difference(a, b, f"{where}[{key}]" if not where else f"{where}.{key}", here)
            if diff:
                return diff
        elif a != b:
            name = f"{where}.{key}" if where else key
            return f"{name} = {b!r} there, {a!r} {here}"
    return None


def shard_identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What the shards of one dataset share.

    Shards of `simulate` share the data config, master seed, mechanisms and morphology.
    Other creators are compared by creator only: each imported NeuronIO file has its own
    seed and input ranges, and a resimulated file stands alone.
    """
    identity = {"created_by": attrs.get("created_by")}
    if identity["created_by"] == "simulate":
        config = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
        identity |= data_identity(config) | {key: attrs.get(key) for key in ("master_seed", "mechanisms_sha256",
                                                                                "morphology_sha256")}
    return identity


def foreign_shards(paths) -> dict[str, str]:
    """Shards that belong to another dataset than most of `paths`: file name -> how it differs.

    The dataset of most shards (of the first, on a tie) is the reference; two runs with
    different seeds or configs into one directory show up here.
    """
    from .dataset import read_shard_attrs

    identities = [(Path(p).name, shard_identity(read_shard_attrs(p))) for p in paths]
    groups: list[list] = []  # [identity, names]
    for name, identity in identities:
        for group in groups:
            if group[0] == identity:
                group[1].append(name)
                break
        else:
            groups.append([identity, [name]])
    if len(groups) < 2:
        return {}
    reference, names = max(groups, key=lambda group: len(group[1]))  # max keeps the first of equals
    here = f"in {names[0]}" + (f" and {len(names) - 1} other shard(s)" if len(names) > 1 else "")
    return {name: _first_difference(reference, identity, here=here)
            for name, identity in identities if identity != reference}


def dataset_attrs(config: SimulationConfig, morphology: Path) -> dict[str, Any]:
    """The provenance attributes every shard of this dataset carries (dataset.REQUIRED_ATTRS)."""
    from .mechanisms import mechanisms_sha256, neuron_version

    return {
        "config": config.to_dict(),
        "master_seed": config.dataset.seed,
        "neuron_version": neuron_version(),
        "mechanisms_sha256": mechanisms_sha256(),
        "morphology_sha256": file_sha256(morphology),
        "morphology_file": morphology.name,
    }


# --------------------------------------------------------------------------- what is already there

@dataclass
class OutputState:
    """What a previous run left in the output directory."""

    done: list[ShardPlan] = field(default_factory=list)  # complete shards of this dataset: skipped
    todo: list[ShardPlan] = field(default_factory=list)  # to simulate (missing or invalid)
    invalid: dict[str, str] = field(default_factory=dict)  # file name -> why it will be re-simulated
    stale_temporaries: list[Path] = field(default_factory=list)  # *.tmp of a killed run

    @property
    def simulations_done(self) -> int:
        return sum(len(plan.simulation_indices) for plan in self.done)

    @property
    def simulations_todo(self) -> int:
        return sum(len(plan.simulation_indices) for plan in self.todo)


def inspect_output_dir(config: SimulationConfig, out_dir: str | os.PathLike, morphology: Path,
                       shards: Sequence[int] | None = None) -> OutputState:
    """Sort the planned shards into done and to-do; refuse a directory holding another dataset.

    Every readable shard_*.h5 in `out_dir` (planned or not) must come from the same data config,
    mechanisms and morphology, else DatasetError. `shards` (as plan_shards takes them): only
    these are done or to do; the others are left for a later run.
    """
    from .dataset import open_shard, read_attrs

    out_dir = Path(out_dir)
    state = OutputState()
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"output path exists and is not a directory: {out_dir}")
    planned = {plan.file_name: plan for plan in plan_shards(config, shards)}
    existing = sorted(out_dir.glob("shard_*.h5")) if out_dir.is_dir() else []
    state.stale_temporaries = temporaries(out_dir, "shard_*.h5")

    expected = dataset_attrs(config, morphology)
    expected_identity = data_identity(expected["config"])
    valid: set[str] = set()
    for path in existing:
        try:
            with open_shard(path) as f:  # schema checks (dataset.validate_shard's) on open
                attrs = read_attrs(f)
                simulation_index = tuple(int(i) for i in f["simulation_index"][()])
        except DatasetError as err:
            if path.name in planned:
                state.invalid[path.name] = str(err).removeprefix(f"{path}: ")
            continue  # an unplanned damaged file is not ours to replace
        found = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
        difference = _first_difference(expected_identity, data_identity(found))
        for key in ("mechanisms_sha256", "morphology_sha256"):
            if difference is None and attrs.get(key) != expected[key]:
                difference = f"{key} = {attrs.get(key)!r} there, {expected[key]!r} here"
        if difference is None and attrs.get("created_by") != "simulate":
            difference = f"created_by = {attrs.get('created_by')!r} there"
        if difference is not None:
            raise DatasetError(
                f"{out_dir} holds shards of another dataset ({path.name}: {difference}); "
                f"use another --out directory or delete those shards"
            )
        plan = planned.get(path.name)
        if plan is not None:
            if (attrs.get("shard_index"), simulation_index) != (plan.index, plan.simulation_indices):
                raise DatasetError(f"{path}: holds shard {attrs.get('shard_index')} (simulations {simulation_index[:2]}...), "
                                   f"expected shard {plan.index} (simulations {plan.simulation_indices[:2]}...)")
            valid.add(path.name)

    for name, plan in planned.items():
        (state.done if name in valid else state.todo).append(plan)
    return state
