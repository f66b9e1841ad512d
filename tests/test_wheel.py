"""Packaging: the built wheel carries the configs, and a fresh venv outside the checkout trains and scores with it."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy of the sources: an in-tree build/ directory can hold modules deleted since.
    src = tmp_path_factory.mktemp("src") / "recsys"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", "log", "log_tensorboard", "docs"))
    # --no-build-isolation: setuptools is already here and the machine may have no index to fetch it from.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("recsys-*.whl")
    return whl


def test_wheel_ships_configs_and_licence(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "recsys/configs/mf_bpr.yaml" in names and "recsys/configs/paper/lightgcn_gowalla.yaml" in names
    n_configs = len([p for p in (REPO / "recsys" / "configs").rglob("*.yaml")])
    assert len([n for n in names if n.startswith("recsys/configs/") and n.endswith(".yaml")]) == n_configs
    assert any(n.endswith("LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)


def test_fresh_venv_outside_the_checkout_fits_and_scores(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies (torch, lightning, ...) come from this environment's site-packages as a plain path entry:
    # .pth files there (the checkout's editable install) are not processed, so `recsys` can only come from the
    # wheel. Installing the wheel's files is what pip does; pip itself is borrowed from this environment.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--prefix",
                           str(venv), str(wheel)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import recsys; print(recsys.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    recsys = [str(venv / "bin" / "recsys")]
    assert Path(recsys[0]).exists()
    listed = subprocess.run(recsys + ["configs"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "lightgcn" in listed.stdout
    fit = subprocess.run(recsys + ["fit", "--config", "mf_bpr", "--trainer.max_epochs", "1", "--run-dir", "run",
                                   "--data.options", "{n_users: 150, n_items: 80, n_interactions: 3000}",
                                   "--trainer.enable_progress_bar", "false"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stderr[-3000:]
    score = subprocess.run(recsys + ["score", "--run-dir", "run", "--out", "top.parquet", "--k", "5"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=300)
    assert score.returncode == 0, score.stderr[-3000:]
    import pandas as pd

    top = pd.read_parquet(work / "top.parquet")
    assert len(top) == 150 * 5 and list(top.columns[:4]) == ["user", "item", "rank", "score"]
