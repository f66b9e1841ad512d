"""Pictures and comparison statistics: ``recsys plot``, ``recsys compare``, bootstrap CIs, Holm, the scripts' plots."""

import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SYNTHETIC, fit_args

from recsys import plots
from recsys.metrics.significance import bootstrap_ci, compare_per_user, holm, paired_test
from recsys.plots import read_log, resolve_curve_metric, run_labels

ROOT = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def write_log(path: Path, valid_prefix: str = "valid", epochs: int = 4) -> Path:
    """A Lightning-style CSV log: per epoch one row of monitored metrics and a separate row of training loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"epoch,step,train/loss,{valid_prefix}/ndcg@20"]
    for e in range(epochs):
        lines.append(f"{e},{10 * e + 9},,{0.1 + 0.02 * e - 0.01 * (e == epochs - 1)}")
        lines.append(f"{e},{10 * e + 9},{0.7 / (e + 1)},")
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ statistics
def test_bootstrap_ci_contains_the_mean_and_matches_normal_theory():
    rng = np.random.default_rng(3)
    x = rng.random(2000)
    mean, lo, hi = bootstrap_ci(x, n_resamples=2000, seed=1)
    assert mean == pytest.approx(x.mean())
    assert lo < mean < hi
    # For a mean of 2000 uniform values the normal 95% half-width 1.96 sd / sqrt(n) is accurate to a few %.
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std(ddof=1) / math.sqrt(x.size), rel=0.1)
    # Seeded: the same seed gives the same interval, columns share the draws (identical columns, identical CIs).
    assert bootstrap_ci(x, n_resamples=2000, seed=1) == (mean, lo, hi)
    m2, lo2, hi2 = bootstrap_ci(np.stack([x, x], axis=1), n_resamples=2000, seed=1)
    assert lo2[0] == lo2[1] == pytest.approx(lo) and hi2[0] == hi2[1] == pytest.approx(hi)


def test_bootstrap_ci_of_constant_values_is_a_point_and_bad_inputs_raise():
    mean, lo, hi = bootstrap_ci(np.full(50, 0.25), n_resamples=100)
    assert mean == lo == hi == pytest.approx(0.25)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.ones(3), confidence=1.0)
    with pytest.raises(ValueError, match="n >= 1"):
        bootstrap_ci(np.zeros(0))


def test_holm_against_a_hand_computed_case():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN (the baseline's own row) is not a comparison: m = 2 here, and it stays NaN.
    out = holm([np.nan, 0.02, 0.5])
    assert math.isnan(out[0])
    np.testing.assert_allclose(out[1:], [0.04, 0.5])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_permutation_test_matches_the_exact_sign_flip_distribution():
    # d = [1, 2, 3, 4]: of the 16 sign patterns only all-plus and all-minus reach |mean| 2.5, so exact p = 2/16.
    res = paired_test(np.array([1.0, 2, 3, 4]), np.zeros(4), "permutation", n_permutations=40_000, seed=0)
    assert res["statistic"] == 2.5
    assert res["p_value"] == pytest.approx(0.125, abs=0.006)
    same = paired_test(np.array([0.1, 0.3]), np.array([0.1, 0.3]), "permutation")
    assert same["p_value"] == 1.0


def test_compare_per_user_identical_models_and_a_better_one():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    better = np.clip(base + 0.05 + rng.normal(0, 0.05, 400), 0, 1)
    values = np.stack([base, base.copy(), better])[:, :, None]  # [models, users, metrics]
    res = compare_per_user(values, baseline=0, n_resamples=500, seed=2)
    assert math.isnan(res["p"][0, 0]) and math.isnan(res["p_holm"][0, 0])
    assert res["p"][1, 0] == 1.0 and res["diff"][1, 0] == 0.0  # identical: no evidence, not NaN
    assert res["lo"][1, 0] == res["lo"][0, 0] and res["hi"][1, 0] == res["hi"][0, 0]  # the same draws
    assert res["p"][2, 0] < 1e-10
    np.testing.assert_allclose(res["p_holm"][:, 0][1:], holm(res["p"][1:, 0]))
    assert np.all((res["lo"] <= res["mean"]) & (res["mean"] <= res["hi"]))
    with pytest.raises(ValueError, match="baseline"):
        compare_per_user(values, baseline=3)


# ------------------------------------------------------------------------------------------------ pictures
def test_run_labels_disambiguate_by_parent():
    assert run_labels(["x/a/mf", "y/b/mf", "z/lightgcn"]) == ["a/mf", "b/mf", "lightgcn"]
    assert run_labels(["r/mf", "r/mf"]) == ["mf", "mf"]


def test_curve_metric_falls_back_to_test_monitoring(tmp_path):
    series = read_log(write_log(tmp_path / "logs" / "metrics.csv", valid_prefix="test_monitor"))
    assert series["train/loss"][0] == (0, 0.7)  # the loss row is read although it lies apart from the metric row
    assert resolve_curve_metric(series, "valid/ndcg@20") == "test_monitor/ndcg@20"
    assert resolve_curve_metric(series, "ndcg@20") == "test_monitor/ndcg@20"
    assert resolve_curve_metric(series, "valid/recall@20") is None


def test_learning_curves_overlay_valid_and_test_monitor_runs(tmp_path):
    logs = {"mf": write_log(tmp_path / "mf.csv"), "paper": write_log(tmp_path / "p.csv", "test_monitor", 6)}
    out = plots.plot_learning_curves(logs, tmp_path / "curves.png")
    assert png_size(out) == (1440, 540)  # 12 x 4.5 inches at 120 dpi
    assert out.stat().st_size > 20_000


def test_metric_bars_and_tradeoff_write_pngs(tmp_path):
    mean = np.array([[0.2, 0.3], [0.25, 0.28]])
    out = plots.plot_metric_bars(["a", "b"], ["ndcg@20", "recall@20"], mean, mean - 0.02, mean + 0.02,
                           tmp_path / "bars.png", p_holm=np.array([[np.nan, np.nan], [0.01, 0.4]]), baseline="a")
    w, h = png_size(out)
    assert w >= 720 and h == 576
    with pytest.raises(ValueError, match="must be"):
        plots.plot_metric_bars(["a"], ["ndcg@20"], mean, mean, mean, tmp_path / "x.png")
    out = plots.plot_tradeoff({"p1": {"A": [(1e4, 0.2), (1e3, 0.1)], "B": []}, "synthetic": {"A": [(10, 0.3)]}},
                        tmp_path / "t.png", xlabel="params", ylabel="ndcg@20")
    assert png_size(out) == (1320, 480)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[name]
    return mod


def test_scripts_draw_through_recsys_plots(tmp_path):
    pareto = _script("pareto_unified")
    rows = [{"dataset": ds, "layout": layout, "compression": c, "embedding_params": int(1e5 * c),
             "total_params": int(1e5 * c) + 10, "valid_ndcg@20": 0.1 + c / 10, "test_ndcg@20": 0.1 + c / 10 + i / 100,
             "test_recall@20": 0.2, "epochs": 3, "fit_s": 1.0, "item_id_collided": 0.1, "item_id_identical": 0.0,
             "collisions": "{}", "run_dir": "x"}
            for ds in ("p1", "synthetic") for i, layout in enumerate(pareto.LAYOUTS) for c in (0.25, 1.0)]
    pareto.write_report(rows, tmp_path)
    assert png_size(tmp_path / "pareto.png") == (1320, 480)
    study = _script("study_factorization")
    rows = [{"series": "MF float32", "bytes_per_item": 4.0 * d, "ndcg@20": 0.18 + d / 2000} for d in (16, 32, 64)]
    rows += [{"series": "PQ", "bytes_per_item": 8.0, "ndcg@20": 0.19}, {"series": "PQ", "bytes_per_item": 16.0,
                                                                          "ndcg@20": 0.17}]
    # The Pareto front keeps the points no cheaper point beats: PQ at 16 B and MF-16 (64 B, 0.188) lose to PQ at 8 B.
    front = study.pareto([(r["bytes_per_item"], r["ndcg@20"]) for r in rows])
    assert front == [(8.0, 0.19), (128.0, 0.196), (256.0, 0.212)]
    study.plot(rows, tmp_path)
    assert png_size(tmp_path / "pareto.png") == (1440, 660)


# ------------------------------------------------------------------------------------------------ the verbs
def test_plot_command_draws_a_tiny_runs_log(mf_run, tmp_path, capsys):
    from recsys.cli import main

    out = tmp_path / "lc.png"
    assert main(["plot", str(mf_run), "--out", str(out)]) == 0
    w, h = png_size(out)
    assert (w, h) == (1440, 540) and out.stat().st_size > 20_000
    assert main(["plot", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pop_run(tmp_path_factory):
    """Most-popular on the same tiny data and split as ``mf_run`` (fits in a second, no Lightning)."""
    from recsys.cli import main

    run = tmp_path_factory.mktemp("pop") / "run"
    assert main(fit_args("pop.yaml", run)) == 0
    return run


def test_compare_command_table_and_numbers(mf_run, pop_run, tmp_path, capsys):
    from recsys.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", str(mf_run), str(pop_run), str(mf_run), "--out", str(out), "--resamples", "300"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and rows[1].startswith(f"| {run_labels([mf_run, pop_run])[0]} (baseline) |")
    got = json.loads((out / "compare.json").read_text())
    mf, pop, again = got["runs"]
    for run, r in ((mf_run, mf), (pop_run, pop)):
        # Every test user is shared, so the compared mean is the run's own test metric.
        assert r["ndcg@20"]["mean"] == pytest.approx(json.loads((Path(run) / "metrics.json").read_text())["ndcg@20"])
        lo, hi = r["ndcg@20"]["ci"]
        assert lo <= r["ndcg@20"]["mean"] <= hi
    assert mf["ndcg@20"]["p"] is None and mf["ndcg@20"]["p_holm"] is None  # the baseline's NaN written as null
    assert again["ndcg@20"]["p"] == 1.0 and again["ndcg@20"]["diff_vs_baseline"] == 0.0
    # Holm over the two comparisons of each metric: the identical run's p = 1, so pop's p is doubled (capped at 1).
    assert pop["ndcg@20"]["p_holm"] == pytest.approx(min(1.0, 2 * pop["ndcg@20"]["p"]))
    assert png_size(out / "compare.png")[1] == 576
    assert "Holm-corrected" in (out / "compare.md").read_text()


def test_compare_refuses_runs_of_different_data(mf_run, tmp_path, capsys):
    from recsys.cli import main

    other = tmp_path / "other"
    assert main(fit_args("pop.yaml", other, "--data.options", TINY_SYNTHETIC.replace("3000", "2500"))) == 0
    capsys.readouterr()
    assert main(["compare", str(mf_run), str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert "different" in err and len(err.splitlines()) == 1
    assert main(["compare", str(mf_run), "--metric", "ndcg@7"]) == 1
    assert "no per-user ndcg@7" in capsys.readouterr().err
