"""bench/new_data_session.sh as a dry run on the CPU: started detached, watched by a second call, it simulates a new
dataset, fine-tunes the released d_m 100 on it in two arms side by side, scores every model on a pooled test set and on
the new split, pairs each arm with its start and the published model, and leaves all of it in out.tgz; then
bench/record_new_data_session.py records what came back and releases an arm."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "new_data_session.sh"
PUBLISHED = REPO.parent / "shared" / "pretrained" / "elmneuron" / "best_elm_neuron"


def session(args, env, timeout=900):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def small_session_env(tmp_path, morphology_path, table: str, fit: str, published: Path, **overrides) -> dict:
    """The environment of a dry run: tiny shards and fits on the CPU (table: the fit's [train.*] table), the fit
    recipe FIT_CONFIGS then the tiny overlay, the published folder under its eval name."""
    (tmp_path / "small.toml").write_text("[dataset]\nsimulations_per_shard = 2\n[inputs]\nduration_ms = 2000\n")
    (tmp_path / "tiny.toml").write_text(
        '[train]\ndevice = "cpu"\nnum_threads = 1\nvalid_simulations = 2\n[data]\nsimulations_per_load = 4\n'
        f'[{table}]\nbatch_size = 4\nbatches_per_epoch = 3\n[evaluate]\ndevice = "cpu"\n')
    return {**os.environ, "SMALL": "1", "R": str(tmp_path / "r"), "OUT": str(tmp_path / "out"),
            "PYTHON": sys.executable, "L5PC_MORPHOLOGY": str(morphology_path),
            "SIM_CONFIG": f"configs/quick.toml {tmp_path / 'small.toml'}",
            "FIT_CONFIGS": f"{fit} {tmp_path / 'tiny.toml'}",
            "EVAL_CONFIGS": f"configs/neuronio.toml {tmp_path / 'tiny.toml'}", "WORKERS": "1",
            "PUBLISHED": str(published), "RESERVE_S": "300", "EVAL_RESERVE_S": "120", **overrides}


@pytest.mark.slow
def test_a_session_started_detached_and_watched_to_the_end(tmp_path, morphology_path):
    if not PUBLISHED.is_dir():
        pytest.skip("../shared/pretrained/elmneuron not beside the repository")
    (tmp_path / "first2.toml").write_text("[data]\nmax_train_simulations = 2\n")  # an arm's own overlay
    published = tmp_path / "published-best-elm-d100"
    published.symlink_to(PUBLISHED)
    (tmp_path / "eval_results.csv").symlink_to(PUBLISHED.parent / "eval_results.csv")  # the per-d_m table, beside it
    fit = ("configs/neuronio.toml configs/models/branch-elm-d100.toml configs/recipes/one_session.toml "
           "configs/recipes/fine_tune_new_data.toml configs/recipes/weight_average.toml")
    out = tmp_path / "out"
    env = small_session_env(tmp_path, morphology_path, "train.branch_elm", fit, published, SEED="917", N_SHARDS="4",
                            SPLITS="918:3 919:3", ARMS=f"short:1 long:2:{tmp_path / 'first2.toml'}",
                            POOL_FIRST="1", MIN_FIT_S="100000")  # the pool first, but not into the fits' time

    assert session(["watch", "5"], env).returncode == 1  # a machine with no run answers at once
    started = session(["start", "20", "1200"], env)  # the first call stops watching long before the run ends
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert "watching stopped; the run goes on" in started.stdout
    assert session(["start", "5", "1200"], env).returncode == 2  # never two runs on one machine
    watched = session(["watch", "850"], env)
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-3000:]
    assert "run ended" in watched.stdout and "simulated 4 shards; test split shard_00003.h5" in watched.stdout
    assert watched.stdout.index("the pooled test set goes on beside the fits") < watched.stdout.index("fits from")

    with tarfile.open(out / "out.tgz") as packed:
        names = set(packed.getnames())
        packed.extractall(tmp_path / "back")
    back = tmp_path / "back"
    # when each shard was written, seconds after the run's start: the simulation's pace, for the next plan
    written = [line.split() for line in (back / "out" / "shard_written_s.txt").read_text().splitlines()]
    assert [name for name, _ in written] == [f"shard_{i:05d}.h5" for i in range(4)]
    assert all(0 <= int(seconds) <= 1200 for _, seconds in written)
    for arm, epochs, simulations in (("short", 1, 4), ("long", 2, 2)):
        assert f"runs/{arm}/checkpoint_best.pt" in names
        summary = json.loads((back / "runs" / arm / "summary.json").read_text())
        assert summary["initialized_from"]["source"].endswith("checkpoints/branch-elm-d100")
        assert (summary["epochs_completed"], summary["training_simulations"]) == (epochs, simulations)
    # every model on both sets: the two arms, their start, the released d_m 20 and the published folder
    for which, simulations in (("split", 2), ("pool", 4)):
        scored = {p.parent.name for p in (back / f"eval_{which}").glob("*/evaluation.json")}
        assert scored == {"short", "long", "branch-elm-d100", "branch-elm-d20", "published-best-elm-d100"}
        evaluation = json.loads((back / f"eval_{which}" / "short" / "evaluation.json").read_text())
        assert evaluation["test"]["simulations"] == simulations
    pool = json.loads((back / "out" / "paired_pool.json").read_text())
    pairs = {(row["a"], row["b"]) for row in pool["rows"]}
    assert {row["test_set"] for row in pool["rows"]} == {"gpu_engine_pooled2"}  # the pool's record name: 2 splits
    assert pairs == {("short", "branch-elm-d100"), ("short", "published-best-elm-d100"), ("long", "branch-elm-d100"),
                     ("long", "published-best-elm-d100"), ("branch-elm-d100", "published-best-elm-d100")}
    # the report of every model scored on the pool, with its figures, in out/
    assert "pooled report: out/pooled_report/report.md" in watched.stdout
    report = (back / "out" / "pooled_report" / "report.md").read_text()
    for model in ("short", "long", "branch-elm-d100", "branch-elm-d20", "published-best-elm-d100"):
        assert sum(line.startswith(f"| {model}") for line in report.splitlines()) == 2  # windowed and whole
    assert (back / "out" / "pooled_report" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    # the published per-d_m rows from the eval_results.csv carried beside the folder, and the fits' training curves
    assert "| Branch-ELM d_m=20 (" in report and "table was not found" not in report
    assert (back / "out" / "pooled_report" / "training.png").read_bytes()[:4] == b"\x89PNG"

    # what came back, recorded in copies of the results files, and the short arm released
    results = tmp_path / "results"
    results.mkdir()
    for name in ("surrogate_accuracy.json", "paired_comparison.json"):
        shutil.copy(REPO / "bench" / "results" / name, results / name)
    record = [sys.executable, "bench/record_new_data_session.py", "--session", str(back), "--device-run", "99",
              "--device", "this CPU", "--results", str(results), "--recorded-as", "branch-elm-d20=branch-elm",
              "--start-note", "the released one", "--release", "short", "--release-to", str(tmp_path / "released")]
    refused = subprocess.run(record[:-4] + ["--release", "nosuch"], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: --release nosuch: not an arm")
    assert json.loads((results / "surrogate_accuracy.json").read_text()) == json.loads(
        (REPO / "bench" / "results" / "surrogate_accuracy.json").read_text())  # nothing written before the refusal
    recorded = subprocess.run(record, cwd=REPO, capture_output=True, text=True)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    accuracy = json.loads((results / "surrogate_accuracy.json").read_text())
    for arm in ("short", "long"):
        entry = accuracy["models"][arm]
        assert set(entry["test_sets"]) == {"gpu_engine_seed917", "gpu_engine_pooled2"}
        assert entry["device_run"] == 99 and entry["initialized_from"]["source"] == \
            "checkpoints/branch-elm-d100 (the released one)"
        evaluation = json.loads((back / "eval_pool" / arm / "evaluation.json").read_text())
        assert entry["test_sets"]["gpu_engine_pooled2"]["test_auc"] == evaluation["windowed"]["spike"]["auc"]
    assert accuracy["datasets"]["train_seed917"]["simulations"] == 4
    for scored in (accuracy["published_checkpoints"]["published-best-elm-d100"], accuracy["models"]["branch-elm"]):
        assert {"gpu_engine_seed917", "gpu_engine_pooled2"} <= set(scored["test_sets"])
    rows = json.loads((results / "paired_comparison.json").read_text())["rows"]
    labels = {row["test_set"] for row in rows if row.get("device_run") == 99}
    # the pool's pairs under the pool's record name (the 2-simulation split may hold no spike to pair on)
    assert "gpu_engine_pooled2" in labels and labels <= {"gpu_engine_seed917", "gpu_engine_pooled2"}
    released = tmp_path / "released" / "branch-elm-d100"
    scores = json.loads((released / "scores.json").read_text())
    assert scores["test_sets"] == accuracy["models"]["short"]["test_sets"]
    predicted = subprocess.run([sys.executable, "-m", "pipelines", "predict", "--checkpoint", str(released),
                                "--inputs", str(sorted((tmp_path / "r" / "split").glob("shard_*.h5"))[0]),
                                "--out", str(tmp_path / "pred.h5"), "--device", "cpu"],
                               cwd=REPO, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-2000:]


@pytest.mark.slow
def test_a_tcn_from_scratch_comes_back_in_float16_parts(tmp_path, morphology_path):
    """START=scratch: a new TCN, no --init-from, no start to score or pair; its 148-MB best checkpoint comes back as
    float16 parts under the device tool's 16 MB a file, which reassemble into a checkpoint the pipeline reads. With
    NEXT_SEED a second link follows in the same run: the best arm (here the only one) fine-tuned on another seed's
    data, scored on the same pool and paired with its start, in next/ of the same layout."""
    published_d20 = PUBLISHED.parent / "num_memory_20"
    if not published_d20.is_dir():
        pytest.skip("../shared/pretrained/elmneuron not beside the repository")
    published = tmp_path / "published-branch-elm-d20"
    published.symlink_to(published_d20)
    fit = ("configs/neuronio.toml configs/recipes/one_session.toml configs/recipes/tcn_small_batch.toml "
           "configs/recipes/tcn_scratch_session.toml configs/recipes/weight_average.toml")
    out = tmp_path / "out"
    env = small_session_env(tmp_path, morphology_path, "train.tcn", fit, published, SEED="927", N_SHARDS="3",
                            SPLITS="928:3", MODEL="tcn", START="scratch", ARMS="tcn-new:1", COMPARE="",
                            POOL_FIRST="1", NEXT_SEED="929", NEXT_SHARDS="3",
                            NEXT_ARMS="tcn-next:1:configs/recipes/tcn_chain_link.toml")
    started = session(["start", "1100", "1300"], env, timeout=1300)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert "run ended" in started.stdout and "fits from scratch" in started.stdout
    assert started.stdout.index("the pooled test set first") < started.stdout.index("fits from scratch")
    assert "the pooled test set was not made" not in started.stdout
    assert "next link: seed 929 from tcn-new" in started.stdout
    assert started.stdout.index("next link") < started.stdout.index("run ended")

    with tarfile.open(out / "out.tgz") as packed:
        names = set(packed.getnames())
        packed.extractall(tmp_path / "back")
    back = tmp_path / "back"
    assert "runs/tcn-new/summary.json" in names and "runs/tcn-new/checkpoint_best.pt" not in names
    summary = json.loads((back / "runs" / "tcn-new" / "summary.json").read_text())
    assert summary["model_kind"] == "tcn" and not summary.get("initialized_from")
    parts = sorted(out.glob("tcn-new-fp16.pt.part-*"))
    assert len(parts) == 2 and all(part.stat().st_size <= 15 * 2**20 for part in parts)
    weights = tmp_path / "tcn-new-fp16.pt"
    weights.write_bytes(b"".join(part.read_bytes() for part in parts))
    md5, name = (back / "out" / "tcn-new-fp16.md5").read_text().split()
    assert name == weights.name and hashlib.md5(weights.read_bytes()).hexdigest() == md5
    assert weights.stat().st_size < 20e6  # 9.2M parameters in 2 bytes each, the training copy left out

    # the float16 copy is the trained model to float16's rounding
    import torch
    from surrogate.checkpoints import load_checkpoint
    full = load_checkpoint(tmp_path / "r" / "runs" / "tcn-new" / "checkpoint_best.pt")["model_state"]
    half = load_checkpoint(weights)["model_state"]
    assert set(half) == set(full)
    for key, value in full.items():
        if value.is_floating_point():
            assert half[key].dtype == torch.float16
            torch.testing.assert_close(half[key].float(), value, rtol=2**-10, atol=1e-7)

    for which in ("split", "pool"):
        scored = {p.parent.name for p in (back / f"eval_{which}").glob("*/evaluation.json")}
        assert scored == {"tcn-new", "published-branch-elm-d20"}
    if (back / "out" / "paired_pool.json").is_file():  # a 2-simulation pool may hold no spike to pair on
        rows = json.loads((back / "out" / "paired_pool.json").read_text())["rows"]
        assert {(row["a"], row["b"]) for row in rows} == {("tcn-new", "published-branch-elm-d20")}
    predicted = subprocess.run([sys.executable, "-m", "pipelines", "predict", "--checkpoint", str(weights),
                                "--inputs", str(sorted((tmp_path / "r" / "split").glob("shard_*.h5"))[0]),
                                "--out", str(tmp_path / "pred.h5"), "--device", "cpu"],
                               cwd=REPO, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-2000:]

    results = tmp_path / "results"
    results.mkdir()
    for name in ("surrogate_accuracy.json", "paired_comparison.json"):
        shutil.copy(REPO / "bench" / "results" / name, results / name)
    recorded = subprocess.run([sys.executable, "bench/record_new_data_session.py", "--session", str(back),
                               "--device-run", "99", "--device", "this CPU", "--results", str(results)],
                              cwd=REPO, capture_output=True, text=True)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    entry = json.loads((results / "surrogate_accuracy.json").read_text())["models"]["tcn-new"]
    assert entry["model_kind"] == "tcn" and "initialized_from" not in entry
    assert set(entry["test_sets"]) == {"gpu_engine_seed927", "gpu_engine_pooled1"}

    # the second link: from the first link's arm, on seed 929's data, scored on the first link's pool
    next_back = back / "next"
    assert (next_back / "out" / "pool.txt").read_text() == (back / "out" / "pool.txt").read_text()
    summary = json.loads((next_back / "runs" / "tcn-next" / "summary.json").read_text())
    assert summary["initialized_from"]["source"].endswith("runs/tcn-new") and summary["epochs_completed"] == 1
    assert len(sorted(out.glob("tcn-next-fp16.pt.part-*"))) == 2
    assert (next_back / "out" / "tcn-next-fp16.md5").is_file()
    for which in ("split", "pool"):
        scored = {p.parent.name for p in (next_back / f"eval_{which}").glob("*/evaluation.json")}
        assert scored == {"tcn-next", "tcn-new", "published-branch-elm-d20"}
    pool_of = {p.parent.name: json.loads(p.read_text()) for p in (back / "eval_pool").glob("*/evaluation.json")}
    again = json.loads((next_back / "eval_pool" / "tcn-new" / "evaluation.json").read_text())
    for metric in ("spike", "soma", "spike_bins_evaluated"):  # the start scores on the same pool as it did
        assert again["windowed"][metric] == pool_of["tcn-new"]["windowed"][metric]
    for _ in range(2):  # a run recorded again (say with scores added) keeps one copy of its note
        recorded = subprocess.run([sys.executable, "bench/record_new_data_session.py", "--session", str(next_back),
                                   "--device-run", "99", "--device", "this CPU", "--results", str(results),
                                   "--note", "the second link"], cwd=REPO, capture_output=True, text=True)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    accuracy = json.loads((results / "surrogate_accuracy.json").read_text())
    assert set(accuracy["models"]["tcn-next"]["test_sets"]) == {"gpu_engine_seed929", "gpu_engine_pooled1"}
    assert accuracy["notes"].count("the second link") == 1


def _evaluation(auc: float, shard_paths: list[str]) -> dict:
    """An evaluation.json of the evaluate stage, as far as the record reads it."""
    return {"test": {"simulations": 128, "shards": [Path(p).name for p in shard_paths], "shard_paths": shard_paths},
            "windowed": {"simulations_kept": 120, "spike_bins_evaluated": 600,
                         "spike": {"auc": auc, "tp_at_fp": {}},
                         "soma": {"raw": {"rmse_mV": 0.7}, "aligned": {"rmse_mV": 0.7}}}}


def test_a_recorded_model_scored_on_another_pool_is_refused(tmp_path):
    """The record scores the start and the published folders again on the pool of record; a score that differs from
    the recorded one by more than float16's rounding means another pool or another model: exit 2, one line, and the
    results files untouched. Within the rounding (a float16 copy of the model) it records."""
    results = tmp_path / "results"
    results.mkdir()
    for name in ("surrogate_accuracy.json", "paired_comparison.json"):
        shutil.copy(REPO / "bench" / "results" / name, results / name)
    accuracy = json.loads((results / "surrogate_accuracy.json").read_text())
    recorded = accuracy["published_checkpoints"]["published-branch-elm-d20"]["test_sets"]["gpu_engine_pooled6"]
    pool = recorded["test_shard_paths"]

    session = tmp_path / "session"
    (session / "out").mkdir(parents=True)
    (session / "out" / "seed.toml").write_text("[dataset]\nseed = 4999\nn_shards = 3\n")
    (session / "runs" / "arm").mkdir(parents=True)
    (session / "runs" / "arm" / "summary.json").write_text(json.dumps({
        "model_kind": "tcn", "num_parameters": 10, "training_time_s": 1.0, "best_epoch": 1, "best_valid_auc": 0.9,
        "epochs_completed": 1, "finished": True, "windows_seen": 8, "training_simulations": 256,
        "training_simulated_ms": 1536000, "device": "cuda", "shards": {"train": ["a.h5", "b.h5"]}}))
    split = ["/machine/split/shard_00002.h5"]

    def session_with(published_auc: float) -> list[str]:
        for name, auc, shards in (("arm", 0.99, split), ("arm", 0.99, pool),
                                  ("published-branch-elm-d20", published_auc, split),
                                  ("published-branch-elm-d20", published_auc, pool)):
            folder = session / ("eval_pool" if shards is pool else "eval_split") / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "evaluation.json").write_text(json.dumps(_evaluation(auc, shards)))
        return [sys.executable, "bench/record_new_data_session.py", "--session", str(session), "--device-run", "99",
                "--device", "this CPU", "--results", str(results)]

    before = (results / "surrogate_accuracy.json").read_bytes()
    refused = subprocess.run(session_with(recorded["test_auc"] + 1e-4), cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: published-branch-elm-d20 scores AUC") and "not the same pool" in \
        refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert (results / "surrogate_accuracy.json").read_bytes() == before

    rounded = subprocess.run(session_with(recorded["test_auc"] + 5e-6), cwd=REPO, capture_output=True, text=True)
    assert rounded.returncode == 0, rounded.stdout + rounded.stderr
    accuracy = json.loads((results / "surrogate_accuracy.json").read_text())
    assert accuracy["models"]["arm"]["test_sets"]["gpu_engine_pooled6"]["test_auc"] == 0.99
    # the recorded pool score stays the one of record; the new split's is added
    scored = accuracy["published_checkpoints"]["published-branch-elm-d20"]["test_sets"]
    assert scored["gpu_engine_pooled6"]["test_auc"] == recorded["test_auc"] and "gpu_engine_seed4999" in scored
