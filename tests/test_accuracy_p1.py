"""Accuracy on protocol P1 (ml-latest-small, per-user random 80/10/10, seed 2026). Slow: `make test-slow`."""

import json

import pytest
from conftest import REPO

from recsys.cli import main

pytestmark = pytest.mark.slow

# Test ndcg@20 floors: RecBole 1.2.1's BPR reaches 0.211 on P1 on this machine; the baselines' floors sit a little
# under what the tuned configs measured (see the benchmark table in the README), to absorb thread-count noise.
FLOORS = {"mf_bpr": 0.211, "ease": 0.27, "als": 0.26, "itemknn": 0.215, "pop": 0.115,
          # Issue 3: at least RecBole LightGCN's 0.2194 and NGCF's 0.219 on P1. Issue 4: AlphaRec above LightGCN's
          # 0.2244 (the paper's claim), with the epoch budget it was measured with.
          "lightgcn": 0.219, "ngcf": 0.219, "alpharec_mlp": 0.2244,
          # Issue 16: the contract's demonstrations, under their measured 0.2308 (SimGCL) and 0.2304 (DNS).
          "simgcl": 0.225, "mf_hard_negatives": 0.225}
EXTRA = {"alpharec_mlp": ["--trainer.max_epochs", "40", "--early_stopping.patience", "5"]}


@pytest.mark.parametrize("config", sorted(FLOORS))
def test_p1_ndcg20_floor(config, tmp_path, ml_small):
    run = tmp_path / config
    args = ["fit", "--config", str(REPO / "configs" / f"{config}.yaml"), "--run-dir", str(run),
            "--data.dataset", "ml-latest-small", "--data.path", str(ml_small),
            "--trainer.enable_progress_bar", "false", *EXTRA.get(config, [])]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ndcg@20"] >= FLOORS[config], metrics


def test_p1_matryoshka_full_width_and_prefix_beat_plain_and_native_mf(tmp_path, ml_small):
    """Issue 21: the shipped Matryoshka MF-128 is plain MF-128 at full width (0.2189 measured) and its 32-dim prefix
    beats MF trained natively at 32 dimensions (0.2155 against 0.2030 measured, seed 2026)."""
    from recsys.runs import Run
    from recsys.scoring.index import PrefixSpec

    def fit(name, config, *extra):
        args = ["fit", "--config", config, "--run-dir", str(tmp_path / name), "--data.dataset", "ml-latest-small",
                "--data.path", str(ml_small), "--trainer.enable_progress_bar", "false", *extra]
        assert main(args) == 0
        return Run.open(tmp_path / name)

    mrl = fit("mrl", "mf_matryoshka")
    # patience 20: MF-32 on this seed otherwise stops at the epoch-0 popularity peak (the harder baseline).
    native = fit("native32", "mf_bpr", "--model.init_args.encoder.init_args.dim", "32",
                 "--early_stopping.patience", "20")
    full = mrl.metrics("test")["ndcg@20"]
    prefix = mrl.evaluate("test", (20,), index=PrefixSpec(dim=32))["ndcg@20"]
    assert full >= 0.215, full
    assert prefix >= native.metrics("test")["ndcg@20"], (prefix, native.metrics("test"))
