"""`report`: report.md and figures from evaluation outputs (synthetic shards, small real checkpoints)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image
import pytest

from test_evaluate import cli, write_fake_dataset, write_fake_run

from surrogate.report import (PUBLISHED_REFERENCES, TARGET_COLOUR, collect_runs, read_metrics_csv,
                              read_published_results)

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO.parent / "shared" / "pretrained" / "elmneuron"


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data, runs, out = root / "data", root / "runs", root / "reports"
    write_fake_dataset(data, duration_ms=1500, seed=5)
    write_fake_run(runs / "elm", "elm", seed=0)
    write_fake_run(runs / "tcn", "tcn", seed=1)
    config = root / "config.toml"
    config.write_text("[evaluate]\ndevice = \"cpu\"\n")
    assert cli(["evaluate", "--config", str(config), "--data", str(data), "--runs", str(runs)]) == 0
    published = root / "published"  # an eval_results.csv of our own, so the test never depends on ../shared
    published.mkdir()
    (published / "eval_results.csv").write_text(
        '"Name","model_config.num_memory","model_stats.model_param_count","test_results.AUC",'
        '"test_results.TP @ 0.0100 FP","test_results.soma_RMSE","test_results.soma_explained_variance_percent"\n'
        '"run-a","20","8002","0.99216","0.744","0.6375","95.67"\n"run-b","1","4601","0.94367","0.427","1.3325","81.1"\n')
    assert cli(["report", "--runs", str(runs), "--data", str(data), "--out", str(out),
                "--published", str(published)]) == 0
    return {"root": root, "data": data, "runs": runs, "out": out, "published": published, "config": config}


def test_report_table_has_every_model_with_its_scores(reported):
    text = (reported["out"] / "report.md").read_text()
    for name in ("elm", "tcn"):
        evaluation = json.loads((reported["runs"] / name / "evaluation.json").read_text())
        windowed, whole = evaluation["windowed"], evaluation["whole"]
        rows = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
        assert len(rows) == 2  # windowed table and whole-simulation table
        assert f"{windowed['spike']['auc']:.4f}" in rows[0]
        assert f"{windowed['soma']['raw']['rmse_mV']:.3f}" in rows[0]
        assert f"{windowed['soma']['aligned']['rmse_mV']:.3f}" in rows[0]
        assert f"{whole['spike']['auc']:.4f}" in rows[1]
        assert "3 sims (4 s)" in rows[0] and "12 s" in rows[0]  # training data and time from summary.json
    for ref in PUBLISHED_REFERENCES:
        assert ref["name"] in text
    assert "Branch-ELM d_m=20 (run-a)" in text and "0.9922" in text
    assert "Branch-ELM d_m=1 (run-b)" in text


def test_report_figures_are_real_images(reported):
    for name in ("roc.png", "traces.png", "params.png", "training.png"):
        path = reported["out"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 400 and image.shape[1] > 1000
        assert image[..., :3].std() > 0.05  # not a blank canvas
        assert f"![{name}]({name})" in (reported["out"] / "report.md").read_text()


def test_report_without_data_or_training_curves_says_what_is_missing(reported, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(reported["runs"], runs)
    for csv in runs.glob("*/metrics.csv"):
        csv.unlink()
    out = tmp_path / "reports"
    empty_data = tmp_path / "data_without_the_shard"
    empty_data.mkdir()
    assert cli(["report", "--runs", str(runs), "--data", str(empty_data), "--out", str(out),
                "--published", str(reported["published"])]) == 0
    printed = capsys.readouterr().out
    assert "input raster not drawn" in printed and "training-curve figure skipped" in printed
    assert not (out / "training.png").exists() and (out / "traces.png").is_file()
    assert "## Notes" in (out / "report.md").read_text()


def test_report_marks_a_fine_tune_whose_time_and_data_are_its_last_fit_alone(reported, tmp_path):
    """A model fitted with --init-from (its training record names initialized_from) is marked, and a note says
    that the time and data columns leave out the training of the model it started from."""
    assert "fine-tune" not in (reported["out"] / "report.md").read_text()
    runs = tmp_path / "runs"
    shutil.copytree(reported["runs"], runs)
    evaluation_path = runs / "tcn" / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text())
    evaluation["training"]["initialized_from"] = {"source": "runs/tcn-before", "training_time_s": 60.0}
    evaluation_path.write_text(json.dumps(evaluation))
    out = tmp_path / "reports"
    assert cli(["report", "--runs", str(runs), "--data", str(reported["data"]), "--out", str(out),
                "--published", str(reported["published"])]) == 0
    text = (out / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| tcn |")]
    assert len(rows) == 2 and all("3 sims (4 s), fine-tune |" in row for row in rows)
    assert not any("fine-tune" in line for line in text.splitlines() if line.startswith("| elm |"))
    assert "started from an already trained model" in text


def test_report_refuses_a_data_directory_that_does_not_exist(reported, tmp_path, capsys):
    """A --data typo is an error (exit 2, one line), not a report quietly drawn without its raster."""
    out = tmp_path / "reports"
    assert cli(["report", "--runs", str(reported["runs"]), "--data", str(tmp_path / "missing"), "--out", str(out),
                "--published", str(reported["published"])]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "dataset directory not found" in error[0] and "missing" in error[0]
    assert not (out / "report.md").exists()


def test_report_from_scores_alone_says_the_predictions_are_missing(reported, tmp_path, capsys):
    """Run directories with evaluation.json but no predictions.h5 (scores brought back from another machine):
    the tables are written and the note names the missing file, not an undefined ROC."""
    runs = tmp_path / "runs"
    shutil.copytree(reported["runs"], runs)
    for predictions in runs.glob("*/predictions.h5"):
        predictions.unlink()
    out = tmp_path / "reports"
    assert cli(["report", "--runs", str(runs), "--out", str(out), "--published", str(reported["published"])]) == 0
    printed = capsys.readouterr().out
    assert "no run directory holds predictions.h5" in printed and "no defined ROC" not in printed
    assert not (out / "roc.png").exists()
    assert "| elm |" in (out / "report.md").read_text()


def test_every_named_run_gets_its_own_colour(reported, tmp_path):
    """Runs named otherwise than a model kind (tcn-run28, tcn-run28-plain, ...) take colours of their own, so that
    eight curves in one figure are eight colours (the sixth palette entry used to be the last, then all black)."""
    runs = tmp_path / "runs"
    for i in range(9):
        shutil.copytree(reported["runs"] / "tcn", runs / f"tcn-run{i}")
    colours = [run.colour for run in collect_runs(runs)]
    assert len(colours) == 9 and len(set(colours)) == 9
    assert TARGET_COLOUR not in colours  # the seventh used to be black, the simulated trace's colour (device run 46)


def test_report_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert cli(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no evaluation.json") and len(err.splitlines()) == 1
    assert cli(["report", "--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "runs directory not found" in capsys.readouterr().err


def test_damaged_evaluation_outputs_are_one_line_errors(reported, tmp_path, capsys):
    """A cut-short predictions.h5 and a non-UTF-8 evaluation.json used to end report with a traceback."""
    runs = tmp_path / "runs"
    shutil.copytree(reported["runs"], runs)
    predictions = runs / "elm" / "predictions.h5"
    predictions.write_bytes(predictions.read_bytes()[:1000])
    assert cli(["report", "--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {predictions}: not a readable HDF5 file (truncated or corrupt?)") and err.count("\n") == 1
    assert "python -m pipelines evaluate" in err
    predictions.unlink()
    (runs / "elm" / "evaluation.json").write_bytes(b"\xff\xfe{}")
    assert cli(["report", "--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {runs / 'elm' / 'evaluation.json'}: not valid JSON (") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_and_keeps_the_earlier_report(reported, tmp_path, cli_on_a_full_disk):
    """Issue 9, item 4: a full disk while writing the first figure (roc.png, about 90 kB) is exit 2 and one
    line naming it; the earlier report's files stay as they were and no partial file is left."""
    out = tmp_path / "reports"
    shutil.copytree(reported["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    error = cli_on_a_full_disk("report", "--runs", str(reported["runs"]), "--data", str(reported["data"]),
                               "--out", str(out), "--published", str(reported["published"]), max_file_bytes=20_000)
    assert error.startswith(f"error: cannot write {out / 'roc.png'}: File too large; ") and "intact" in error, error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_readers(reported, tmp_path):
    curves = read_metrics_csv(reported["runs"] / "elm" / "metrics.csv")
    assert list(curves["epoch"]) == [1, 2] and list(curves["valid_auc"]) == [0.7, 0.8]
    assert read_metrics_csv(tmp_path / "absent.csv") is None
    rows = read_published_results(reported["published"])
    assert [r["num_memory"] for r in rows] == [1, 20] and rows[1]["auc"] == pytest.approx(0.99216)
    assert read_published_results(tmp_path) == []
    runs = collect_runs(reported["runs"])
    assert [r.name for r in runs] == ["elm", "tcn"] and set(runs[0].rocs) == {"windowed", "whole"}


@pytest.mark.skipif(not (PRETRAINED / "eval_results.csv").is_file(), reason="published elmneuron folder not at ../shared")
def test_published_csv_of_the_elmneuron_release_is_read():
    rows = read_published_results(PRETRAINED)
    assert len(rows) >= 10
    d20 = next(r for r in rows if r["num_memory"] == 20)
    assert d20["num_parameters"] == 8002 and d20["auc"] == pytest.approx(0.99216, abs=1e-5)


def test_data_efficiency_from_runs_on_nested_training_sets(tmp_path):
    """Real tiny fits on 1, 2 and all 3 training simulations ([data] max_train_simulations), evaluated: the report
    plots test AUC and RMSE against the training-set size and writes the points to data_efficiency.json."""
    from surrogate.config import DataConfig, TrainConfig
    from surrogate.train import fit

    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "reports"
    write_fake_dataset(data, n_shards=3, simulations_per_shard=3, duration_ms=1500, seed=3)  # train, valid, test
    train = TrainConfig(batch_size=2, epochs=1, batches_per_epoch=2, learning_rate=5e-3, valid_simulations=2,
                        num_threads=1)
    names = []
    for n in (1, 2, 0):
        config = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, simulations_per_load=4,
                            max_train_simulations=n)
        name = f"elm_n{n or 'all'}"
        summary = fit("elm", train, {"num_memory": 2}, data, runs / name, data_config=config)
        assert summary["training_simulations"] == (n or 3)
        names.append(name)
    # a larger model on all the data is a point of another curve (d_m 3), not of d_m 2's
    fit("elm", train, {"num_memory": 3}, data, runs / "elm_d3", data_config=config)
    config = tmp_path / "config.toml"
    config.write_text("[data]\nwindow_ms = 200\nburn_in_ms = 50\nignore_first_ms = 300\n[evaluate]\ndevice = \"cpu\"\n")
    assert cli(["evaluate", "--config", str(config), "--data", str(data), "--runs", str(runs),
                "--models", ",".join([*names, "elm_d3"])]) == 0
    # a fine-tune on 5 simulations of a model trained before: its size leaves out its start's data, so no point
    shutil.copytree(runs / "elm_n1", runs / "elm_n1_tuned")
    tuned = json.loads((runs / "elm_n1_tuned" / "evaluation.json").read_text())
    tuned["training"] |= {"training_simulations": 5, "initialized_from": {"source": str(runs / "elm_nall")}}
    (runs / "elm_n1_tuned" / "evaluation.json").write_text(json.dumps(tuned))
    assert cli(["report", "--runs", str(runs), "--data", str(data), "--out", str(out)]) == 0

    curves = json.loads((out / "data_efficiency.json").read_text())
    assert list(curves) == ["elm-d2"]  # elm-d3 has one training-set size only
    assert [p["training_simulations"] for p in curves["elm-d2"]] == [1, 2, 3]
    for point, name in zip(curves["elm-d2"], names):
        evaluation = json.loads((runs / name / "evaluation.json").read_text())
        assert point["run"] == name and point["test_auc"] == evaluation["windowed"]["spike"]["auc"]
        assert point["test_rmse_aligned_mV"] == evaluation["windowed"]["soma"]["aligned"]["rmse_mV"]
    assert (out / "data_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    assert "## Data efficiency" in text and "![data_efficiency.png](data_efficiency.png)" in text


def test_no_data_efficiency_figure_from_one_training_set_size(reported):
    assert not (reported["out"] / "data_efficiency.png").exists()
    assert not (reported["out"] / "data_efficiency.json").exists()
    assert "Data efficiency" not in (reported["out"] / "report.md").read_text()


def test_report_on_a_test_split_without_spikes(tmp_path):
    """No output spike in the test split: AUC is undefined (null), the ROC figure is left out with a note, and the
    rest of the report is written (it used to fail formatting the missing AUC)."""
    import h5py

    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "reports"
    shards = write_fake_dataset(data, duration_ms=1500, seed=6)
    with h5py.File(shards[-1], "r+") as f:  # the test split: no spike bin at all
        f["output_spikes"][...] = False
    write_fake_run(runs / "elm", "elm", seed=0)
    config = tmp_path / "config.toml"
    config.write_text("[evaluate]\ndevice = \"cpu\"\n")
    assert cli(["evaluate", "--config", str(config), "--data", str(data), "--runs", str(runs)]) == 0
    assert json.loads((runs / "elm" / "evaluation.json").read_text())["whole"]["spike"]["auc"] is None
    assert cli(["report", "--runs", str(runs), "--data", str(data), "--out", str(out)]) == 0
    assert not (out / "roc.png").exists() and (out / "traces.png").is_file()
    assert "| elm |" in (out / "report.md").read_text()
