"""Record one run of bench/new_data_session.sh in the results files, and release an arm if asked.

    python bench/record_new_data_session.py --session DIR --device-run N --device WORDS
        [--cvode-runs DIR] [--recorded-as EVAL_NAME=MODEL ...] [--pairs JSON ...] [--note TEXT ...]
        [--release ARM [--release-to checkpoints]]

DIR is the run's unpacked out.tgz (out/seed.toml, runs/<arm>/, eval_split/<name>/, eval_pool/<name>/,
out/paired_*.json). What it writes:
- bench/results/surrogate_accuracy.json: the new dataset (train_seed<S>, test_gpu_engine_seed<S>); each arm as a
  model with its scores on the new split (gpu_engine_seed<S>), on the pooled test set (gpu_engine_pooled<K>, K its
  splits) and, with --cvode-runs, on the CVode test set (CVODE_RUNS/<arm>/evaluation.json, made on the CPU here);
  the same two test sets for each published folder (published-*) and for each evaluation --recorded-as names
  (a released checkpoint scored under its folder's name, recorded under the model it was released from); a note.
- bench/results/paired_comparison.json: the rows of out/paired_*.json and of each --pairs file.
- with --release ARM: the arm as checkpoints/<kind>-d<memory>/ (bench/surrogate_accuracy.py's release).
Nothing is recomputed: every number is read from a file the pipeline wrote.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common.errors import DatasetError, UserInputError, first_line  # noqa: E402
from common.jsonio import read_json, update_json_rows, write_json  # noqa: E402
from surrogate_accuracy import model_entry, release, scores_of  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PUBLISHED_PREFIX = "published-"  # new_data_session.sh's names for the published folders
# A recorded model scored again on the same pool must come out the same, to float16's rounding: a TCN carried
# between sessions in float16 (half_precision_checkpoint.py) scored 1.0e-6 AUC off its float32 original in device
# run 46 (0.9900600 against 0.9900590); another pool, or another model, differs by 1e-4 or more.
POOL_TOLERANCE = 1e-5


def session_scores(session: Path, seed: int) -> tuple[dict[str, dict], str, str]:
    """{name: {split label: scores, pool label: scores}} for every evaluation of the session."""
    split_label = f"gpu_engine_seed{seed}"
    pool_label = None
    scores: dict[str, dict] = {}
    for folder, label in (("eval_split", split_label), ("eval_pool", None)):
        for path in sorted((session / folder).glob("*/evaluation.json")):
            entry = scores_of(read_json(path))
            if label is None:  # the pool is named by how many splits it holds
                label = pool_label = f"gpu_engine_pooled{len(entry.get('test_shard_paths', entry['test_shards']))}"
            scores.setdefault(path.parent.name, {})[label] = entry
    if pool_label is None:
        raise DatasetError(f"no evaluation under {session / 'eval_pool'}: not an unpacked out.tgz")
    return scores, split_label, pool_label


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session", type=Path, required=True, help="the unpacked out.tgz of new_data_session.sh")
    parser.add_argument("--device-run", type=int, required=True, help="the device run's number (bench/README.md)")
    parser.add_argument("--device", required=True, help="the GPU, in words (summary.json says only 'cuda')")
    parser.add_argument("--cvode-runs", type=Path, default=None, help="CPU evaluations on the CVode test set, DIR/<arm>/")
    parser.add_argument("--recorded-as", action="append", default=[], metavar="EVAL_NAME=MODEL",
                        help="record the evaluation EVAL_NAME under the existing model MODEL (repeatable)")
    parser.add_argument("--pairs", action="append", type=Path, default=[], help="another paired_comparison JSON")
    parser.add_argument("--start-note", default=None,
                        help="which model the arms started from, e.g. \"device run 29's fine-tune\"")
    parser.add_argument("--note", action="append", default=[], help="a sentence on the run, kept in the JSON")
    parser.add_argument("--release", default=None, metavar="ARM", help="release this arm under --release-to")
    parser.add_argument("--release-to", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the results JSON files are")
    args = parser.parse_args(argv)
    try:
        record(args)
    except UserInputError as err:  # not a session folder, an arm it lacks, a pool that is not the recorded one
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    return 0


def record(args: argparse.Namespace) -> None:
    session = args.session
    if not (session / "out" / "seed.toml").is_file():
        raise DatasetError(f"{session / 'out' / 'seed.toml'} not found: --session must be an unpacked out.tgz")
    dataset = tomllib.loads((session / "out" / "seed.toml").read_text())["dataset"]
    seed = dataset["seed"]
    scores, split_label, pool_label = session_scores(session, seed)
    accuracy_path = args.results / "surrogate_accuracy.json"
    accuracy = read_json(accuracy_path)
    if any("=" not in item for item in args.recorded_as):
        raise UserInputError(f"--recorded-as takes EVAL_NAME=MODEL, got {args.recorded_as}")
    recorded_as = dict(item.split("=", 1) for item in args.recorded_as)
    unknown = sorted(set(recorded_as.values()) - set(accuracy["models"]))
    if unknown:
        raise UserInputError(f"--recorded-as: no model {', '.join(unknown)} in {accuracy_path}")
    missing_pairs = [str(path) for path in args.pairs if not path.is_file()]
    if missing_pairs:
        raise DatasetError(f"--pairs: {', '.join(missing_pairs)} not found")

    arms = sorted(p.name for p in (session / "runs").iterdir() if (p / "summary.json").is_file())
    if not arms:
        raise DatasetError(f"no fit with a summary.json under {session / 'runs'}")
    if args.release and args.release not in arms:
        raise UserInputError(f"--release {args.release}: not an arm of this session ({', '.join(arms)})")
    for arm in arms:
        entry = model_entry(session / "runs" / arm, args.cvode_runs / arm if args.cvode_runs else None)
        entry["device"] = args.device
        entry["test_sets"] |= scores.get(arm, {})
        entry["device_run"] = args.device_run
        start = entry.get("initialized_from")
        if start and args.start_note:  # the device's absolute path, as the repository names it, and which model it was
            source = str(start["source"])
            start["source"] = f"{source[source.find('checkpoints/'):] if 'checkpoints/' in source else source} " \
                              f"({args.start_note})"
        accuracy["models"][arm] = entry
    for name, tests in scores.items():
        if name in arms:
            continue
        if name.startswith(PUBLISHED_PREFIX):
            target = accuracy["published_checkpoints"].setdefault(name, {"test_sets": {}})
        elif name in recorded_as:
            target = accuracy["models"][recorded_as[name]]
        else:
            print(f"(not recorded: {name}; name its model with --recorded-as {name}=MODEL)")
            continue
        before = target["test_sets"].get(pool_label)
        if before and abs(before["test_auc"] - tests[pool_label]["test_auc"]) > POOL_TOLERANCE:
            raise DatasetError(f"{name} scores AUC {tests[pool_label]['test_auc']:.6f} on {pool_label}, "
                               f"recorded {before['test_auc']:.6f}: not the same pool or not the same model")
        target["test_sets"][split_label] = tests[split_label]
        target["test_sets"].setdefault(pool_label, tests[pool_label])

    summaries = [read_json(session / "runs" / arm / "summary.json") for arm in arms]
    first = max(summaries, key=lambda summary: summary["training_simulations"])  # the whole training set
    split = next(iter(scores.values()))[split_label]
    accuracy["datasets"][f"train_seed{seed}"] = {
        "simulations": first["training_simulations"], "simulated_ms": first["training_simulated_ms"],
        "shards": len(first["shards"]["train"]), "master_seed": seed,
        "config": f"configs/neuronio_gpu.toml + [dataset] seed = {seed}, n_shards = {dataset['n_shards']}",
        "device_run": args.device_run}
    accuracy["datasets"][f"test_gpu_engine_seed{seed}"] = {
        "simulations": split["test_simulations"], "shards": len(split["test_shards"]), "master_seed": seed,
        "shard": split["test_shards"][0]}
    # recording a run again (say with its CVode scores added) keeps one copy of each of its notes
    accuracy["notes"] = [n for n in accuracy.get("notes", []) if n not in args.note] + args.note
    write_json(accuracy_path, accuracy)
    print(f"-> {accuracy_path}: {len(arms)} arm(s), {split_label} and {pool_label}")

    rows = []
    for path in sorted((session / "out").glob("paired_*.json")) + args.pairs:
        rows += [{**row, "device_run": args.device_run} for row in read_json(path)["rows"]]
    paired_path = args.results / "paired_comparison.json"
    paired = read_json(paired_path)
    described = paired.get("test_sets", {}) | {split_label: (
        f"the test split ({split['test_shards'][0]}) of the GPU-engine dataset of seed {seed} "
        f"({split['test_simulations_kept']} of {split['test_simulations']} kept, {split['test_spike_bins']} spike "
        f"bins), evaluated on the {args.device} in device run {args.device_run}; {', '.join(arms)} trained on that "
        f"dataset's training shards, the others never saw it")}
    update_json_rows(paired_path, "rows", rows, key=lambda r: (r["test_set"], r["a"], r["b"], r["mode"]),
                     updated=datetime.now(timezone.utc).isoformat(timespec="seconds"), test_sets=described)
    print(f"-> {paired_path}: {len(rows)} pair(s)")

    if args.release:
        result = {"models": {args.release: accuracy["models"][args.release]}, "device": args.device,
                  "datasets": {key: accuracy["datasets"][key] for key in (f"train_seed{seed}",
                                                                          f"test_gpu_engine_seed{seed}")},
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "notes": args.note}
        for folder in release(session / "runs", result, args.release_to):
            print(f"released {folder}")


if __name__ == "__main__":
    sys.exit(main())
