"""bench/task_chain_call.sh on the CPU: a long-horizon run chained over three calls, the first drawing its data, the
second on a "fresh machine" (an empty chain folder) resuming from the run directory the first call sent back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "task_chain_call.sh"
TINY_LISTOPS = "[tasks.listops]\ntrain_size = 24\nvalid_size = 8\ntest_size = 8\nmin_length = 20\nmax_length = 120\nmax_depth = 4\n"


def run_script(script: str, args: list[str], **env_vars: str) -> subprocess.CompletedProcess:
    """bench/<script> on the tiny ListOps smoke run (2 epochs, 600 s), with these environment variables set."""
    env = dict(os.environ, **env_vars, PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(["bash", str(ROOT / "bench" / script), "listops", "elm", *args, "2", "600",
                           "--extra-config", "configs/tasks/smoke.toml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def call(out: Path, chain: Path, run_tgz: Path, data: Path, **extra: str) -> subprocess.CompletedProcess:
    return run_script(SCRIPT.name, ["chain"], **extra, OUT=str(out), CHAIN=str(chain), RUN_TGZ=str(run_tgz), DATA=str(data))


def prepare_tiny_listops(tmp_path: Path) -> Path:
    """The tiny ListOps files, prepared here: their folder."""
    (tmp_path / "tiny.toml").write_text(TINY_LISTOPS)
    data = tmp_path / "data"
    prepared = subprocess.run([sys.executable, "-m", "pipelines", "prepare-task", "--task", "listops", "--data-dir", str(data),
                               "--config", str(tmp_path / "tiny.toml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    return data


def test_a_run_chained_over_calls_draws_its_data_and_resumes_from_what_the_last_call_sent_back(tmp_path):
    data = prepare_tiny_listops(tmp_path)

    # call 1 draws the data on its machine (nothing carried), and its fit time limit stops it after its first epoch of two
    first = call(tmp_path / "out1", tmp_path / "machine1", tmp_path / "none.tgz", tmp_path / "nothing", MAX_TIME_S="1e-6",
                 PREPARE=str(tmp_path / "tiny.toml"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "a fresh run" in first.stdout and "draw the listops data on this machine" in first.stdout
    for split in ("train", "valid", "test"):  # seeded: the same files as those drawn here
        assert (tmp_path / "machine1" / "data" / "listops" / f"{split}.h5").read_bytes() == (data / "listops" / f"{split}.h5").read_bytes()
    (row,) = json.loads((tmp_path / "out1" / "rows.json").read_text())["rows"]
    assert row["finished"] is False and row["epochs_completed"] == 1 and row["epochs_planned"] == 2
    assert (tmp_path / "out1" / "run.tgz").stat().st_size > 0 and (tmp_path / "out1" / "log.txt").stat().st_size > 0

    # call 2 on another machine: nothing in its chain folder, the first call's run.tgz and the data carried
    second = call(tmp_path / "out2", tmp_path / "machine2", tmp_path / "out1" / "run.tgz", data)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resume from the carried" in second.stdout
    (row,) = json.loads((tmp_path / "out2" / "rows.json").read_text())["rows"]
    assert row["finished"] is True and row["epochs_completed"] == 2 and row["resumed_at_epochs"] == [1]

    # call 3 on the second machine: its own run directory, already finished
    third = call(tmp_path / "out3", tmp_path / "machine2", tmp_path / "none.tgz", data)
    assert third.returncode == 0 and "resume from this machine's" in third.stdout


def test_missing_task_data_is_a_one_line_error(tmp_path):
    done = call(tmp_path / "out", tmp_path / "machine", tmp_path / "none.tgz", tmp_path / "nowhere")
    assert done.returncode == 2 and done.stderr.startswith("error: no prepared listops data") and done.stderr.count("\n") == 1
    assert not (tmp_path / "machine").exists()


def round_call(out: Path, ladder: Path, source: str, label: str, source_tgz: Path, data: Path) -> subprocess.CompletedProcess:
    return run_script("fine_tune_round.sh", [source, label], OUT=str(out), LADDER=str(ladder), SOURCE_TGZ=str(source_tgz),
                      RUN_TGZ=str(out / "none.tgz"), DATA=str(data))


def test_fine_tune_rounds_start_each_from_the_last_rounds_best_weights_on_fresh_machines(tmp_path):
    data = prepare_tiny_listops(tmp_path)
    start = call(tmp_path / "out0", tmp_path / "machine0", tmp_path / "none.tgz", data)  # the ladder's first run, "chain"
    assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
    (source,) = json.loads((tmp_path / "out0" / "rows.json").read_text())["rows"]

    # round 1 on a fresh machine: the first run unpacked from what its call sent back
    first = round_call(tmp_path / "out1", tmp_path / "machine1", "chain", "round1", tmp_path / "out0" / "run.tgz", data)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (row,) = json.loads((tmp_path / "out1" / "rows.json").read_text())["rows"]
    assert row["label"] == "round1" and row["finished"] is True and row["epochs_completed"] == 2
    assert row["initialized_from"]["source"] == str(tmp_path / "machine1" / "chain" / "runs" / "chain" / "listops" / "elm")
    assert row["initialized_from"]["epoch"] == source["best_epoch"]

    # round 2 on another fresh machine from round 1's run.tgz; a missing source is a one-line error
    second = round_call(tmp_path / "out2", tmp_path / "machine2", "round1", "round2", tmp_path / "out1" / "run.tgz", data)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    (row,) = json.loads((tmp_path / "out2" / "rows.json").read_text())["rows"]
    assert row["initialized_from"]["source"] == str(tmp_path / "machine2" / "round1" / "runs" / "round1" / "listops" / "elm")
    missing = round_call(tmp_path / "out3", tmp_path / "machine3", "round9", "round10", tmp_path / "none.tgz", data)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no run round9") and missing.stderr.count("\n") == 1


def test_the_pathfinder32_recipe_runs_its_stages_in_order_and_goes_on_from_carried_runs_on_a_fresh_machine(tmp_path):
    (tmp_path / "tiny.toml").write_text("[tasks.pathfinder32]\ntrain_size = 16\nvalid_size = 8\ntest_size = 8\n")
    data = tmp_path / "data"
    prepared = subprocess.run([sys.executable, "-m", "pipelines", "prepare-task", "--task", "pathfinder32", "--data-dir",
                               str(data), "--config", str(tmp_path / "tiny.toml")], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-2000:]

    def recipe(out: Path, machine: Path, carry: Path) -> subprocess.CompletedProcess:
        env = dict(os.environ, OUT=str(out), LADDER=str(machine), CARRY=str(carry), DATA=str(data), PYTHON=sys.executable,
                   EXTRA="configs/tasks/smoke.toml", BASE_EPOCHS="2", ROUND_EPOCHS="2 2",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        return subprocess.run(["bash", str(ROOT / "bench" / "pathfinder32_recipe.sh"), "600"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)

    first = recipe(tmp_path / "out1", tmp_path / "machine1", tmp_path / "no_carry")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "all stages done: recipe_round2" in first.stdout
    rows = {label: json.loads((tmp_path / "out1" / label / "rows.json").read_text())["rows"][0]
            for label in ("recipe_dropout", "recipe_round1", "recipe_round2")}
    assert rows["recipe_dropout"]["model_config"]["model"]["input_dropout"] == 0.1
    assert rows["recipe_dropout"]["train_config"]["augment"] == "none" and rows["recipe_dropout"]["initialized_from"] is None
    for label, source in (("recipe_round1", "recipe_dropout"), ("recipe_round2", "recipe_round1")):
        assert rows[label]["model_config"]["model"]["input_dropout"] == 0.0
        assert rows[label]["train_config"]["augment"] == "dihedral" and rows[label]["train_config"]["learning_rate"] == 1e-4
        assert rows[label]["initialized_from"]["source"] == str(tmp_path / "machine1" / source / "runs" / source /
                                                                "pathfinder32" / "elm")
        assert rows[label]["initialized_from"]["epoch"] == rows[source]["best_epoch"]

    # a fresh machine with the first stage's run.tgz carried: it is not trained again, the rounds are
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "recipe_dropout.tgz").write_bytes((tmp_path / "out1" / "recipe_dropout" / "run.tgz").read_bytes())
    second = recipe(tmp_path / "out2", tmp_path / "machine2", carry)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "== recipe_dropout:" not in second.stdout and "== recipe_round1 from recipe_dropout" in second.stdout
    assert not (tmp_path / "out2" / "recipe_dropout").exists() and "all stages done" in second.stdout
