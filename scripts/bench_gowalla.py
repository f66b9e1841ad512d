"""Per-epoch training time on Gowalla: ours vs RecBole 1.2.1 vs the official LightGCN-PyTorch code, side by side.

Models: MF-BPR, LightGCN and NGCF (the paper form, ``configs/ngcf.yaml``, which is RecBole's form; and the authors'
TensorFlow form, ``configs/ngcf_official.yaml``), all at the same settings: batch 2048, dim 64, 3 layers, one
uniform negative per positive, Adam. An epoch is ``ceil(n_train / 2048)`` = 396 steps on Gowalla for every code.

Each measurement runs in its own process, one after another (never two at once), with the same thread count
(``--threads``, default ``$OMP_NUM_THREADS`` or 1):

- **ours**: the real ``recsys fit`` path: ``recsys.config.build_fit_parser()`` parses the model's YAML plus the
  overrides below, ``parser.instantiate(cfg)`` builds the ``RecModel`` and ``RecDataModule``, and
  ``lightning.Trainer(**vars(init.trainer))`` fits one epoch of ``warmup + steps`` batches. Batches are built
  inside the timed loop (the datamodule samples per batch); loading the data and building the graph are timed
  apart. The sampler is ``recsys.data.examples.UserUniform`` (the official codes' user-uniform draw) when it
  imports, else the default per-interaction ``Pairs``; the output says which.
- **RecBole 1.2.1** (``scripts/peers/recbole_gowalla.py`` in RecBole's venv, ``~/.cache/recsys-peers/recbole``, made
  on first use as ``../shared/peers/recbole_p1.sh`` makes it): Gowalla as atomic files with ``benchmark_filename``,
  its own ``Trainer._train_epoch`` over its own ``TrainDataLoader``, stopped after ``warmup + steps`` batches.
  RecBole samples per interaction (every training interaction once per epoch, one uniform negative each), not
  user-uniform.
- **official LightGCN-PyTorch** (gusye1234/LightGCN-PyTorch, ``scripts/peers/lightgcn_official.py`` importing its
  code from ``--official-dir``, in ``~/.cache/recsys-peers/lightgcn-official``, made on first use): its own
  ``Procedure.BPR_train_original`` (sampler, shuffle, ``utils.BPRLoss.stageOne``) with ``utils.minibatch`` cut
  after ``warmup + steps`` batches; the epoch's up-front sampling is timed apart. It has MF (``PureMF``) and
  LightGCN, no NGCF.

Per-epoch seconds are (wall time of ``steps`` steps after ``warmup`` steps) / steps × 396. The official code
samples the whole epoch before its first step, so its epoch is that plus its sampling time (shown apart); the
ratio ours/official compares against the whole epoch. CPU time (``time.process_time``) over the same window is
reported too: on a shared machine wall time swings with other people's jobs.

``--profile`` runs ours only, in this process, with ``torch.profiler`` over the timed steps, prints the top 15
ops by self CPU time and the sparse-product floor: the time of one step's sparse products alone
(``recsys.encoders.graph.sparse_mm`` on the model's own adjacency with a [n_users + n_items, 64] table, × the
products a step does: one per layer forward, one per layer backward).

The official code is not in this repository: extract it once, e.g. from a clone or mirror of
gusye1234/LightGCN-PyTorch, ``git --git-dir=REPO/.git archive HEAD code | tar -x -C /tmp/lightgcn-official``
(or pass ``--official-git GITDIR`` and the script extracts ``code/`` itself).

Usage::

    .venv/bin/python scripts/bench_gowalla.py --steps 30
    .venv/bin/python scripts/bench_gowalla.py --steps 5 --models lightgcn --peers recbole --json /tmp/b.json
    .venv/bin/python scripts/bench_gowalla.py --steps 10 --models lightgcn ngcf_official --profile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "gowalla"
RECBOLE_VENV = Path(os.environ.get("RECBOLE_VENV", Path.home() / ".cache" / "recsys-peers" / "recbole"))
OFFICIAL_VENV = Path(os.environ.get("LIGHTGCN_OFFICIAL_VENV",
                                    Path.home() / ".cache" / "recsys-peers" / "lightgcn-official"))
BATCH = 2048

#: our models: config, extra overrides, and the peers' names (None: the peer has no such model).
MODELS = {
    "mf_bpr": {"label": "MF-BPR", "config": "configs/mf_bpr.yaml",
               "overrides": ["--model.init_args.encoder.init_args.dim", "64"], "recbole": "BPR", "official": "mf"},
    "lightgcn": {"label": "LightGCN", "config": "configs/lightgcn.yaml", "overrides": [], "recbole": "LightGCN",
                 "official": "lgn"},
    "ngcf": {"label": "NGCF (paper form)", "config": "configs/ngcf.yaml", "overrides": [], "recbole": "NGCF",
             "official": None},
    "ngcf_official": {"label": "NGCF (authors' TF form)", "config": "configs/ngcf_official.yaml", "overrides": [],
                      "recbole": "NGCF", "official": None},
}
PEER_NAMES = ("recbole", "official")


def train_size(data: Path) -> int:
    """Training interactions in a ``uid iid iid ...`` train.txt."""
    with open(data / "train.txt") as fh:
        return sum(max(len(line.split()) - 1, 0) for line in fh)


# ------------------------------------------------------------------------------------------------------ ours
def user_uniform_available() -> bool:
    try:
        from recsys.data.examples import UserUniform  # noqa: F401
    except ImportError:
        return False
    return True


def ours_argv(model: str, data: Path, n_batches: int, node_dropout: float | None, sampler: str) -> list[str]:
    """The ``recsys fit`` arguments of one timing run (one epoch of ``n_batches`` batches, no validation)."""
    spec = MODELS[model]
    argv = ["--config", str(ROOT / spec["config"]), *spec["overrides"],
            "--data.dataset", "benchmark-txt", "--data.path", str(data), "--data.split.method", "predefined",
            "--data.loader.batch_size", str(BATCH), "--data.loader.num_negatives", "1",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(n_batches),
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_model_summary", "false",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    if sampler == "UserUniform":
        argv += ["--data.loader.examples", "recsys.data.examples.UserUniform"]
    if model.startswith("ngcf") and node_dropout is not None:
        argv += ["--model.init_args.encoder.init_args.node_dropout", str(node_dropout)]
    return argv


class _StepClock:
    """Lightning callback: wall and CPU time at the end of every training batch, optionally profiling a window."""

    def __new__(cls, *a, **k):
        import lightning as L

        # Built lazily so importing this script (tests, --help) does not import Lightning.
        class StepClock(L.Callback):
            def __init__(self, profile_from: int | None = None, profile_to: int | None = None) -> None:
                self.wall: list[float] = []
                self.cpu: list[float] = []
                self.profile_from, self.profile_to, self.prof = profile_from, profile_to, None

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self.wall.append(time.perf_counter())
                self.cpu.append(time.process_time())
                if self.profile_from is not None and batch_idx == self.profile_from:
                    from torch.profiler import ProfilerActivity, profile

                    self.prof = profile(activities=[ProfilerActivity.CPU])
                    self.prof.__enter__()
                if self.prof is not None and batch_idx == self.profile_to:
                    self.prof.__exit__(None, None, None)

        return StepClock(*a, **k)


def run_ours(model: str, data: Path, steps: int, warmup: int, node_dropout: float | None, threads: int,
             profile: bool = False) -> dict:
    """Time ``steps`` training steps of ours after ``warmup`` steps, through the fit parser and Lightning."""
    import torch

    torch.set_num_threads(threads)
    import lightning as L

    from recsys.config import build_fit_parser

    sampler = "UserUniform" if user_uniform_available() else "Pairs"
    parser = build_fit_parser(exit_on_error=False)
    cfg = parser.parse_args(ours_argv(model, data, warmup + steps, node_dropout, sampler))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    init = parser.instantiate(cfg)
    dm, rec = init.data, init.model
    t0 = time.perf_counter()
    prepared = dm.prepare()  # load + prepare (idempotent: fit's own setup reuses it)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec.bind(prepared)  # tables and graph (fit's configure_model finds the model bound)
    t_bind = time.perf_counter() - t0
    clock = _StepClock(warmup - 1 if profile else None, warmup + steps - 1 if profile else None)
    targs = dict(vars(init.trainer))
    targs["callbacks"] = list(targs.get("callbacks") or []) + [clock]
    trainer = L.Trainer(**targs)
    t0 = time.perf_counter()
    trainer.fit(rec, datamodule=dm)
    t_fit = time.perf_counter() - t0
    if len(clock.wall) < warmup + steps:
        raise RuntimeError(f"ours/{model}: only {len(clock.wall)} training batches ran")
    lo, hi = warmup - 1, warmup + steps - 1
    step_s = (clock.wall[hi] - clock.wall[lo]) / steps
    cpu_step_s = (clock.cpu[hi] - clock.cpu[lo]) / steps
    # Our batch building alone (it runs inside the timed steps): a few batches of the epoch's dataset.
    ds = dm.train_set
    k = min(10, len(ds))
    t0 = time.perf_counter()
    for b in range(k):
        ds[b]
    sample_batch_s = (time.perf_counter() - t0) / k
    out = {"code": "ours", "model": model, "sampler": sampler, "steps": steps, "warmup": warmup,
           "step_s": step_s, "cpu_step_s": cpu_step_s, "sample_batch_s": sample_batch_s,
           "load_s": t_load, "graph_s": t_bind, "fit_call_s": t_fit,
           "lightning_epoch_s": rec.epoch_times[0] if rec.epoch_times else None,
           "n_train": int(prepared.train.nnz), "n_users": prepared.n_users, "n_items": prepared.n_items,
           "threads": torch.get_num_threads()}
    if profile:
        out["profile_table"] = clock.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        out["floor"] = sparse_floor(rec.encoder, ds[warmup % len(ds)], reps=max(3, min(steps, 10)))
    return out


def sparse_floor(encoder, batch=None, reps: int = 5) -> dict | None:
    """One step's sparse products alone, timed with the public functions of :mod:`recsys.encoders.graph`.

    ``floor_step_s``: a graph encoder's step does ``n_layers`` products with ``A`` forward and ``n_layers`` with
    ``Aᵀ`` backward (``A`` itself when symmetric): 2·L × ``sparse_mm`` (the encoders' kernel) on the model's own
    adjacency with a [N, 64] table (the fastest of ``reps`` calls). ``torch.sparse.mm`` on the same CSR matrix is
    timed for reference. When graph.py restricts a step's last layer to the batch's rows (``spmm_rows``,
    ``rows_restricted``), ``rows_floor_step_s`` is that chain, forward and backward: L - 1 full products, then
    ``spmm_rows`` for the batch's rows.
    """
    import torch

    from recsys.encoders import graph

    adj = getattr(encoder, "adj", None)
    if adj is None:
        return None
    n_layers = encoder.propagation.n_layers if hasattr(encoder, "propagation") else len(encoder.layers)
    a, at = adj.matrices()
    x = torch.randn(adj.n, 64)

    def clock(fn) -> float:
        # The fastest of ``reps`` calls after a warm one (kernel compilation): other jobs only ever add time.
        fn()
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    t_a = clock(lambda: graph.sparse_mm(a, x))
    t_at = t_a if at is a else clock(lambda: graph.sparse_mm(at, x))
    t_torch = clock(lambda: torch.sparse.mm(a, x))
    out = {"n_nodes": adj.n, "nnz": adj.nnz, "symmetric": bool(adj.symmetric), "n_layers": n_layers,
           "products_per_step": 2 * n_layers, "sparse_mm_A_s": t_a, "sparse_mm_At_s": t_at,
           "torch_sparse_mm_A_s": t_torch, "floor_step_s": n_layers * (t_a + t_at), "rows_floor_step_s": None}
    spmm_rows, restricted = getattr(graph, "spmm_rows", None), getattr(graph, "rows_restricted", None)
    if batch is not None and spmm_rows is not None and restricted is not None and restricted(x, a):
        rows = torch.unique(torch.cat([batch.users, batch.items.reshape(-1) + encoder.n_users]))
        leaf = x.clone().requires_grad_()

        def chain() -> None:
            h = leaf
            for _ in range(n_layers - 1):
                h = graph.spmm(a, at, h)
            spmm_rows(a, at, h, rows).sum().backward()

        out.update(rows_floor_step_s=clock(chain), batch_rows=int(len(rows)))
    return out


# ------------------------------------------------------------------------------------------------------ peers
def ensure_venv(venv: Path, packages: list[str]) -> Path:
    """The venv's python, creating the venv with ``packages`` on first use."""
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"[bench] creating {venv} (first use): pip install {' '.join(packages)}", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True)
    return py


def recbole_python() -> Path:
    # As ../shared/peers/recbole_p1.sh installs it: RecBole needs numpy<2 and old pandas/scipy.
    import torch

    return ensure_venv(RECBOLE_VENV, [f"torch=={torch.__version__.split('+')[0]}", "numpy<2", "pandas<2.2",
                                      "scipy<1.13", "recbole==1.2.1"])


def official_python() -> Path:
    # What the official code imports (tensorboardX only in main.py, not used); cppimport + pybind11 for its C++
    # sampler; the same torch as ours so the codes, not the libraries, differ.
    import torch

    return ensure_venv(OFFICIAL_VENV, [f"torch=={torch.__version__.split('+')[0]}", "numpy", "scipy", "pandas",
                                       "scikit-learn", "tqdm", "cppimport", "pybind11"])


def ensure_official_code(official_dir: Path, git_dir: str | None) -> None:
    if (official_dir / "code" / "Procedure.py").exists():
        return
    if not git_dir:
        raise FileNotFoundError(f"{official_dir}/code not found: extract gusye1234/LightGCN-PyTorch there "
                                "(git --git-dir=REPO archive HEAD code | tar -x -C DIR) or pass --official-git")
    official_dir.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "HEAD", "code"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(official_dir)], input=archive, check=True)


def run_json(cmd: list[str], threads: int, timeout: float) -> dict:
    """Run one peer adapter; its last ``RESULT {json}`` line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (rc {p.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------------------ report
def per_epoch(r: dict | None, steps_per_epoch: int, key: str = "step_s") -> float | None:
    if not r or r.get(key) is None:
        return None
    return r[key] * steps_per_epoch


def fmt(x: float | None, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def report(results: dict, models: list[str], steps_per_epoch: int, header: str) -> str:
    rows = []
    cols = ("model", "ours s/ep", "RecBole s/ep", "official s/ep", "ours/RecBole", "ours/official",
            "ours CPU s/ep", "RecBole CPU", "official CPU", "CPU ours/RB", "CPU ours/off")
    for m in models:
        ours = results.get(("ours", m))
        rb = results.get(("recbole", MODELS[m]["recbole"]))
        of = results.get(("official", MODELS[m]["official"])) if MODELS[m]["official"] else None
        o_ep, r_ep = per_epoch(ours, steps_per_epoch), per_epoch(rb, steps_per_epoch)
        f_ep = None if of is None else per_epoch(of, steps_per_epoch) + of["sample_epoch_s"]
        o_cpu, r_cpu = per_epoch(ours, steps_per_epoch, "cpu_step_s"), per_epoch(rb, steps_per_epoch, "cpu_step_s")
        f_cpu = None if of is None else per_epoch(of, steps_per_epoch, "cpu_step_s") + of["sample_epoch_cpu_s"]
        rows.append((MODELS[m]["label"], fmt(o_ep), fmt(r_ep), "—" if of is None else
                     f"{f_ep:.2f} ({of['step_s'] * steps_per_epoch:.2f}+{of['sample_epoch_s']:.1f})",
                     ratio(o_ep, r_ep), ratio(o_ep, f_ep), fmt(o_cpu), fmt(r_cpu), fmt(f_cpu), ratio(o_cpu, r_cpu),
                     ratio(o_cpu, f_cpu)))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(r) -> str:
        return "  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r))

    return "\n".join([header, line(cols), line(tuple("-" * w for w in widths)), *map(line, rows)])


def details(results: dict) -> str:
    out = []
    for (code, model), r in results.items():
        if code == "ours":
            out.append(f"  ours/{model}: sampler {r['sampler']}, load {r['load_s']:.1f} s, graph/tables "
                       f"{r['graph_s']:.1f} s, batch building {r['sample_batch_s'] * 1e3:.1f} ms/batch (inside "
                       f"the steps), step {r['step_s'] * 1e3:.0f} ms wall / {r['cpu_step_s'] * 1e3:.0f} ms CPU")
        elif code == "recbole":
            out.append(f"  RecBole/{model}: setup (dataset, dataloaders, model) {r['setup_s']:.1f} s, step "
                       f"{r['step_s'] * 1e3:.0f} ms wall / {r['cpu_step_s'] * 1e3:.0f} ms CPU, "
                       f"{r['batches_per_epoch']} batches/epoch of {r['batch_size']}; {r['notes']}")
        else:
            out.append(f"  official/{model}: setup {r['setup_s']:.1f} s (adjacency {r['graph_note']}), sampler "
                       f"{r['sampler']} {r['sample_epoch_s']:.1f} s/epoch ({r['n_samples']} samples, "
                       f"{r['batches_per_epoch']} batches), step {r['step_s'] * 1e3:.0f} ms wall / "
                       f"{r['cpu_step_s'] * 1e3:.0f} ms CPU")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="Timed training steps per measurement (default 30).")
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps before them (default 3).")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--peers", nargs="*", choices=PEER_NAMES, default=list(PEER_NAMES),
                   help="Peers to run (default both; '--peers' alone runs ours only).")
    p.add_argument("--skip-peer", nargs="+", choices=PEER_NAMES, default=[], help="Peers not to run.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Directory with train.txt and test.txt.")
    p.add_argument("--ngcf-node-dropout", type=float, default=0.1,
                   help="NGCF node dropout for ours and RecBole alike (default 0.1, the configs' and the paper's; "
                        "the authors' TF code has 0.1 but its node_dropout_flag defaults to off).")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="Threads for every code (default $OMP_NUM_THREADS or 1).")
    p.add_argument("--official-dir", type=Path, default=Path("/tmp/lightgcn-official"),
                   help="Where gusye1234/LightGCN-PyTorch's tree is (its code/; data/gowalla/ is filled in).")
    p.add_argument("--official-git", default=None, help="A git dir of LightGCN-PyTorch to extract code/ from.")
    p.add_argument("--official-sampler", choices=["auto", "python", "cpp"], default="auto",
                   help="The official sampler: its default (cpp when cppimport builds it, else python), or forced.")
    p.add_argument("--json", type=Path, default=None, help="Write every measurement as JSON here.")
    p.add_argument("--profile", action="store_true",
                   help="Ours only, in this process: torch.profiler top-15 ops over the timed steps, and the "
                        "sparse-product floor.")
    p.add_argument("--timeout", type=float, default=1800, help="Seconds allowed to each peer measurement.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one ours measurement
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.steps < 1 or a.warmup < 1:
        raise SystemExit("--steps and --warmup must be >= 1")
    data = a.data.resolve()
    if a.worker:  # one measurement of ours, in its own process
        r = run_ours(a.worker, data, a.steps, a.warmup, a.ngcf_node_dropout, a.threads)
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    n_train = train_size(data)
    steps_per_epoch = math.ceil(n_train / BATCH)
    header = (f"Gowalla ({data}): {n_train} training interactions, batch {BATCH} -> {steps_per_epoch} steps/epoch; "
              f"dim 64, 3 layers, 1 uniform negative, Adam; {a.steps} timed steps after {a.warmup} warm-up; "
              f"{a.threads} thread(s); NGCF node dropout {a.ngcf_node_dropout}")
    if a.profile:
        return profile_main(a, data, steps_per_epoch, header)
    peers = [p for p in a.peers if p not in a.skip_peer]
    results: dict = {}
    failures: list[str] = []
    t_all = time.perf_counter()

    def measure(key, fn):
        print(f"[bench] {key[0]}/{key[1]} ...", flush=True)
        t = time.perf_counter()
        try:
            results[key] = fn()
            r = results[key]
            print(f"[bench]   {r['step_s'] * 1e3:.0f} ms/step wall, {r['cpu_step_s'] * 1e3:.0f} ms/step CPU "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        except Exception as e:  # a peer that fails is reported, the rest goes on
            failures.append(f"{key[0]}/{key[1]}: {e}")
            print(f"[bench]   FAILED: {e}", flush=True)

    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    for m in a.models:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", m, "--data", str(data),
               "--ngcf-node-dropout", str(a.ngcf_node_dropout), *common]
        measure(("ours", m), lambda cmd=cmd: run_json(cmd, a.threads, a.timeout))
    if "recbole" in peers:
        for name in dict.fromkeys(MODELS[m]["recbole"] for m in a.models):
            def rb(name=name):
                py = recbole_python()
                return run_json([str(py), str(PEERS / "recbole_gowalla.py"), "--model", name, "--data", str(data),
                                 "--node-dropout", str(a.ngcf_node_dropout), *common], a.threads, a.timeout)
            measure(("recbole", name), rb)
    if "official" in peers:
        for name in dict.fromkeys(MODELS[m]["official"] for m in a.models if MODELS[m]["official"]):
            def of(name=name):
                ensure_official_code(a.official_dir, a.official_git)
                py = official_python()
                return run_json([str(py), str(PEERS / "lightgcn_official.py"), "--model", name, "--data", str(data),
                                 "--official-dir", str(a.official_dir), "--sampler", a.official_sampler, *common],
                                a.threads, a.timeout)
            measure(("official", name), of)

    print()
    print(report(results, a.models, steps_per_epoch, header))
    print("official s/ep = steps + the epoch's up-front sampling (shown as steps+sampling); ours and RecBole build "
          "their batches inside the steps.")
    print("Sampling: ours " + ", ".join(sorted({r["sampler"] for (c, _), r in results.items() if c == "ours"}))
          + " (UserUniform = uniform user, then one of their items, then a uniform negative; Pairs = every training "
            "interaction once); RecBole per interaction (every training interaction once per epoch, uniform "
            "negative); official: " + (", ".join(sorted({r["sampler"] for (c, _), r in results.items()
                                                       if c == "official"})) or "not run")
          + " (UniformSample_original_python: n_train uniform users, one positive and one uniform negative each; "
            "its C++ sampler: n_train // n_users draws for every user, then shuffled).")
    print("Wall s/ep = wall seconds per step x steps/epoch; CPU = process CPU seconds over the same steps "
          "(less sensitive to other jobs on a shared machine).")
    if "ngcf_official" in a.models and ("recbole", "NGCF") in results:
        print("RecBole's NGCF is the paper form; its number is repeated on the authors'-form row for reference.")
    print("Details:\n" + details(results))
    for f in failures:
        print("FAILED " + f)
    print(f"[bench] total {time.perf_counter() - t_all:.0f} s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"header": header, "steps_per_epoch": steps_per_epoch, "n_train": n_train,
                                      "args": {k: str(v) for k, v in vars(a).items()},
                                      "results": [r for r in results.values()], "failures": failures}, indent=1))
        print(f"[bench] wrote {a.json}")
    return 1 if failures else 0


def profile_main(a, data: Path, steps_per_epoch: int, header: str) -> int:
    print(header)
    out = []
    for m in a.models:
        r = run_ours(m, data, a.steps, a.warmup, a.ngcf_node_dropout, a.threads, profile=True)
        print(f"\n=== ours/{m} ({r['sampler']}): {r['step_s'] * 1e3:.0f} ms/step wall, "
              f"{r['cpu_step_s'] * 1e3:.0f} ms/step CPU -> {r['step_s'] * steps_per_epoch:.2f} s/epoch "
              f"(under the profiler) ===")
        print(r["profile_table"])
        f = r["floor"]
        if f is None:
            print("floor: no sparse products (not a graph encoder)")
        else:
            print(f"floor: {f['products_per_step']} sparse products/step ({f['n_layers']} layers x forward A + "
                  f"backward A^T{', A symmetric' if f['symmetric'] else ''}), adjacency {f['n_nodes']} nodes, "
                  f"{f['nnz']} non-zeros, [{f['n_nodes']}, 64] table: sparse_mm A {f['sparse_mm_A_s'] * 1e3:.1f} ms"
                  f", A^T {f['sparse_mm_At_s'] * 1e3:.1f} ms (torch.sparse.mm A {f['torch_sparse_mm_A_s'] * 1e3:.1f}"
                  f" ms) -> floor {f['floor_step_s'] * 1e3:.0f} ms/step = {f['floor_step_s'] * steps_per_epoch:.2f}"
                  f" s/epoch; the step is {r['step_s'] / f['floor_step_s']:.2f}x the floor (its CPU time "
                  f"{r['cpu_step_s'] / f['floor_step_s']:.2f}x)")
            if f["rows_floor_step_s"] is not None:
                rf = f["rows_floor_step_s"]
                print(f"row-restricted floor (graph.py computes a step's last layer for the batch's "
                      f"{f['batch_rows']} rows): {f['n_layers'] - 1} full products + spmm_rows, "
                      f"forward and backward: {rf * 1e3:.0f} ms/step = {rf * steps_per_epoch:.2f} s/epoch; the step "
                      f"is {r['step_s'] / rf:.2f}x it (CPU {r['cpu_step_s'] / rf:.2f}x)")
        out.append({k: v for k, v in r.items() if k != "profile_table"})
    if a.json:
        a.json.write_text(json.dumps({"header": header, "profile": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
