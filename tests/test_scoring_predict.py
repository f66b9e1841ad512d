"""Lightning predict-path scoring: 2-process CPU DDP output equals ``recsys score``; resume and rewrite work."""

import json
import os
import subprocess
import sys

from conftest import REPO

from recsys.scoring.batch import score_run


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("part-*"))}


def test_ddp_predict_equals_plain_score(mf_run, tmp_path):
    ref = tmp_path / "ref"
    score_run(mf_run, ref, k=7, shard_users=40)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "recsys.cli", "score", "--run-dir", str(mf_run), "--out", str(out), "--k", "7",
           "--shard-users", "40", "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Same Parquet bytes and sidecars per shard, same manifest: the same rows as the plain path.
    assert _files(out) == _files(ref) and len(_files(ref)) == 8
    assert json.loads((out / "manifest.json").read_text()) == json.loads((ref / "manifest.json").read_text())
    # Both ranks wrote: rank 0 scored shards 0 and 2 only, not all four.
    total = json.loads((ref / "manifest.json").read_text())["rows"]
    rank0 = int(proc.stdout.split("wrote ")[1].split(" rows on rank 0")[0])
    assert 0 < rank0 < total


def test_predict_rerun_skips_complete_and_rewrites_corrupted(mf_run, tmp_path):
    from recsys.scoring.predict import predict_run

    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}
    out = tmp_path / "pred"
    assert predict_run(mf_run, out, k=5, shard_users=50, trainer=trainer) > 0
    before = _files(out)
    assert predict_run(mf_run, out, k=5, shard_users=50, trainer=trainer) == 0  # all verified, none rewritten
    victim = out / "part-00001.parquet"
    victim.write_bytes(victim.read_bytes()[:100])
    (out / "part-00002.parquet").unlink()
    assert predict_run(mf_run, out, k=5, shard_users=50, trainer=trainer) > 0
    assert _files(out) == before
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_predict_rerun_with_another_k_rewrites_stale_shards(mf_run, tmp_path):
    # finding 1 (issue 19), Lightning path: shards of `k 10` were kept by a `k 3` re-run ("0 rows", complete).
    from recsys.scoring.predict import predict_run

    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}
    out = tmp_path / "pred"
    predict_run(mf_run, out, k=10, shard_users=50, trainer=trainer)
    assert predict_run(mf_run, out, k=3, shard_users=50, trainer=trainer) > 0
    ref = tmp_path / "ref"
    score_run(mf_run, ref, k=3, shard_users=50)  # the plain path: same shards, sidecars and manifest
    assert _files(out) == _files(ref)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads((ref / "manifest.json").read_text())
    assert manifest["complete"] and manifest["produced_by"]["k"] == 3
