"""``recsys evaluate``: full-ranking metrics of a finished run."""

from __future__ import annotations

import time

from recsys.cli._common import OneLineParser, _add_serving_args, _is_exact, _write_result, format_metrics, positive_int

#: file names ``evaluate --out`` may take inside a run directory (the names evaluate itself writes there).
EVAL_NAMES = r"eval_[\w.-]*\.json"


def cmd_evaluate(argv: list[str]) -> int:
    p = OneLineParser(prog="recsys evaluate", description="Full-ranking metrics of a finished run.")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", required=True)
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--ks", type=positive_int, nargs="+", default=[10, 20])
    p.add_argument("--out", default=None,
                   help="JSON output (default RUN/eval_<split>.json, RUN/eval_<split>_<index>[_gallery].json with "
                        "--index or --gallery). Inside a run directory only an eval_*.json name is accepted.")
    _add_serving_args(p)
    a = p.parse_args(argv)
    if a.out:
        from recsys.io_utils import check_output_path

        # Before the model is rebuilt: inside a run directory only a result file of evaluate's own naming.
        check_output_path(a.out, allow_in_run=EVAL_NAMES)
    from recsys.metrics.evaluate import beyond_accuracy, evaluate
    from recsys.runs import Run

    run = Run.open(a.run_dir)
    data = run.data()
    model = run.recommender(data)
    gallery = None
    if a.gallery:
        gallery = Run.open(a.gallery).item_table_for(data.item_vocab)
    if not _is_exact(a.index) or gallery is not None:
        # A non-default index or gallery is reported on its own (no beyond-accuracy pass), so defaults stay
        # comparable.
        m = evaluate(model, data, a.split, tuple(a.ks), index=a.index, gallery=gallery)
        print(f"{a.split} metrics (index {a.index}{', gallery ' + a.gallery if a.gallery else ''}):\n"
              + format_metrics(m))
        tag = "_".join(([] if _is_exact(a.index) else [a.index.tag()]) + (["gallery"] if a.gallery else []))
        _write_result(run, a.out, f"eval_{a.split}_{tag}.json", m)
        return 0
    t = time.perf_counter()
    m = evaluate(model, data, a.split, tuple(a.ks))
    if not m:
        print(f"[recsys] the run's data has no {a.split} interactions: nothing to evaluate")
        return 0
    print(f"{a.split} metrics ({time.perf_counter() - t:.2f} s):\n" + format_metrics(m))
    extra = beyond_accuracy(model, data, a.split, tuple(a.ks))
    print("beyond accuracy: " + ", ".join(f"{k} {v:.4g}" for k, v in extra.items()))
    if a.split == "test" and data.cold_items is not None:
        from recsys.metrics.cold import cold_item_metrics

        cold = cold_item_metrics(model, data, tuple(a.ks))
        if cold:
            print(f"cold items ({cold['cold_items']} held out, {cold['users']} users): " + ", ".join(
                f"{k} {cold[k]:.4f}" for k in cold if k.startswith(("recall@", "ndcg@", "random_"))))
            extra.update({f"cold/{k}": v for k, v in cold.items()})
    _write_result(run, a.out, f"eval_{a.split}.json", {**m, **extra})
    return 0


