"""`python -m pipelines prepare-task`: settings from [tasks.NAME], --shd-dir, resume, one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py

from common.files import file_sha256
from surrogate.tasks import open_split

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[tasks.listops]
train_size = 12
valid_size = 3
test_size = 3
chunk_size = 5
seed = 7

[tasks.shd-adding]
train_pairs = 10
valid_pairs = 4
test_pairs = 4
bin_ms = 5.0

[train]
epochs = 1
"""


def cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "pipelines", "prepare-task", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def one_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr[-2000:]
    return errors[0]


def test_generate_from_a_config_and_rerun(tmp_path):
    config = tmp_path / "tasks.toml"
    config.write_text(CONFIG)
    result = cli("--task", "listops", "--data-dir", tmp_path / "data", "--config", config)
    assert result.returncode == 0, result.stderr
    assert '"train_size": 12' in result.stdout and "done in" in result.stdout
    with h5py.File(tmp_path / "data" / "listops" / "train.h5", "r") as f:
        assert f["inputs"].shape == (12, 2000) and int(f.attrs["seed"]) == 7
    again = cli("--task", "listops", "--data-dir", tmp_path / "data", "--config", config)
    assert again.returncode == 0, again.stderr
    assert len(open_split("listops", tmp_path / "data", "test")) == 3
    in_parallel = cli("--task", "listops", "--data-dir", tmp_path / "parallel", "--config", config, "--workers", 2)
    assert in_parallel.returncode == 0, in_parallel.stderr
    for split in ("train", "valid", "test"):
        assert file_sha256(tmp_path / "parallel" / "listops" / f"{split}.h5") == \
            file_sha256(tmp_path / "data" / "listops" / f"{split}.h5")


def test_shd_adding_with_shd_dir(tmp_path):
    from test_tasks_shd import write_shd

    shd = tmp_path / "shd"
    shd.mkdir()
    write_shd(shd / "shd_train.h5", 20, 1)
    write_shd(shd / "shd_test.h5", 6, 2)
    config = tmp_path / "tasks.toml"
    config.write_text(CONFIG)
    result = cli("--task", "shd-adding", "--data-dir", tmp_path / "data", "--config", config, "--shd-dir", shd)
    assert result.returncode == 0, result.stderr
    ds = open_split("shd-adding", tmp_path / "data", "train")
    assert len(ds) == 10 and ds[0]["inputs"].shape == (400, 700)


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    config = tmp_path / "tasks.toml"
    config.write_text("[tasks.listops]\ntrain_sise = 3\n")
    assert "unknown key 'train_sise'" in one_error(cli("--task", "listops", "--data-dir", tmp_path, "--config", config))
    config.write_text("[tasks.listop]\ntrain_size = 3\n")
    assert "unknown task [tasks.listop]" in one_error(cli("--task", "listops", "--data-dir", tmp_path, "--config", config))
    config.write_text("[simulation]\nduration_ms = 100\n[tasks.listops]\ntrain_size = 3\n")  # a misspelt table
    assert "tasks.toml: unknown table [simulation]" in one_error(
        cli("--task", "listops", "--data-dir", tmp_path / "data", "--config", config))
    assert not (tmp_path / "data").exists()
    assert "config file not found" in one_error(cli("--task", "listops", "--data-dir", tmp_path, "--config", tmp_path / "no.toml"))
    assert "needs the SHD files" in one_error(cli("--task", "shd-adding", "--data-dir", tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "shd_train.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (bad / "shd_test.h5").write_bytes(b"")
    line = one_error(cli("--task", "shd-adding", "--data-dir", tmp_path, "--shd-dir", bad))
    assert "shd_train.h5: not a readable HDF5 file (truncated or corrupt?)" in line
    assert "--shd-dir is for the task shd-adding" in one_error(
        cli("--task", "pathfinder32", "--data-dir", tmp_path, "--shd-dir", bad))
    assert "--workers is for the generated tasks" in one_error(
        cli("--task", "shd-adding", "--data-dir", tmp_path, "--shd-dir", bad, "--workers", 2))
    assert "--workers must be >= 1" in one_error(cli("--task", "listops", "--data-dir", tmp_path, "--workers", 0))


def test_a_full_disk_is_a_user_error(tmp_path, cli_on_a_full_disk):
    config = tmp_path / "tasks.toml"
    config.write_text(CONFIG)
    line = cli_on_a_full_disk("prepare-task", "--task", "listops", "--data-dir", str(tmp_path / "data"),
                              "--config", str(config), max_file_bytes=6000)
    assert line.startswith("error: cannot write") and "File too large" in line
