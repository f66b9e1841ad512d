"""The official LightGCN-PyTorch code (gusye1234/LightGCN-PyTorch) on Gowalla: time ``steps`` of its training loop.

Nothing of theirs is copied here: their modules are imported from ``--official-dir`` (a tree holding their
``code/``), unmodified. ``scripts/bench_gowalla.py`` runs this in its own venv (``~/.cache/recsys-peers/
lightgcn-official``: the same torch as ours, plus what their code imports and cppimport/pybind11 for their C++
sampler).

What runs is theirs end to end: ``world`` parses the same flags as their ``main.py`` (``--dataset gowalla --model
lgn|mf --recdim 64 --layer 3 --lr 0.001 --decay 1e-4 --bpr_batch 2048 --seed 2020``, tensorboard off; no GPU here,
so ``world.device`` is the CPU), ``register`` loads Gowalla from ``data/gowalla/{train,test}.txt`` (linked to our
copy) and builds the model (``model.LightGCN`` or ``model.PureMF``), ``utils.BPRLoss`` holds their Adam and
``stageOne`` step, and ``Procedure.BPR_train_original`` runs one epoch: ``utils.UniformSample_original`` draws the
whole epoch up front (their C++ sampler when cppimport builds ``sources/sampling.cpp``, else
``UniformSample_original_python``; ``--sampler`` forces one), shuffles, and loops ``utils.minibatch``. Two of their
module functions are wrapped, not changed: ``utils.UniformSample_original`` to time the sampling, and
``utils.minibatch`` to stop after ``warmup + steps`` batches and stamp the time at each batch request.

Prints ``RESULT {json}``: ``step_s``/``cpu_step_s`` per step, ``sample_epoch_s``/``sample_epoch_cpu_s`` of the
epoch's sampling, ``setup_s`` (data loading and, on first use, their adjacency build, which they cache as
``data/gowalla/s_pre_adj_mat.npz``).

Usage:
  python lightgcn_official.py --official-dir /tmp/lightgcn-official --data ../shared/datasets/gowalla --model lgn
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path


def link_data(official_dir: Path, data: Path) -> None:
    """Put Gowalla's train.txt/test.txt where their loader reads them (``data/gowalla/``), as symlinks."""
    target = official_dir / "data" / "gowalla"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "test.txt"):
        dst, src = target / name, (data / name).resolve()
        if dst.is_symlink() and dst.resolve() == src:
            continue
        if dst.exists() or dst.is_symlink():
            if dst.is_symlink() or dst.stat().st_size != src.stat().st_size:
                dst.unlink()
                cached = target / "s_pre_adj_mat.npz"  # built from another train.txt
                if cached.exists():
                    cached.unlink()
            else:
                continue
        dst.symlink_to(src)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--official-dir", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--model", choices=["lgn", "mf"], default="lgn")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sampler", choices=["auto", "python", "cpp"], default="auto")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = p.parse_args()
    code = (a.official_dir / "code").resolve()
    link_data(a.official_dir, a.data)
    cached_graph = (a.official_dir / "data" / "gowalla" / "s_pre_adj_mat.npz").exists()

    import torch

    torch.set_num_threads(a.threads)
    # Their main.py's flags (README: --decay=1e-4 --lr=0.001 --layer=3 --seed=2020 --dataset=gowalla --recdim=64).
    sys.argv = ["main.py", "--dataset", "gowalla", "--model", a.model, "--recdim", "64", "--layer", "3",
                "--lr", "0.001", "--decay", "1e-4", "--bpr_batch", "2048", "--seed", "2020", "--tensorboard", "0"]
    sys.path.insert(0, str(code))
    os.chdir(code)  # register.py reads "../data/gowalla" relative to code/
    t0 = time.perf_counter()
    import world

    world.device = torch.device("cpu")
    import utils

    if a.sampler == "python":
        utils.sample_ext = False
    elif a.sampler == "cpp" and not utils.sample_ext:
        raise SystemExit("their C++ sampler did not build (cppimport)")
    sampler = "cpp (sources/sampling.cpp via cppimport)" if utils.sample_ext else "UniformSample_original_python"
    utils.set_seed(world.seed)  # as main.py
    import Procedure
    import register

    dataset = register.dataset
    rec = register.MODELS[world.model_name](world.config, dataset).to(world.device)
    bpr = utils.BPRLoss(rec, world.config)
    setup_s = time.perf_counter() - t0

    marks = {"wall": [], "cpu": [], "sample": None, "n": None}
    sample = utils.UniformSample_original
    minibatch = utils.minibatch
    limit = a.warmup + a.steps

    def timed_sample(*args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        S = sample(*args, **kwargs)
        marks["sample"] = (time.perf_counter() - w, time.process_time() - c)
        marks["n"] = len(S)
        return S

    def cut_minibatch(*args, **kwargs):
        it = minibatch(*args, **kwargs)
        for _ in range(limit):
            marks["wall"].append(time.perf_counter())
            marks["cpu"].append(time.process_time())
            try:
                batch = next(it)
            except StopIteration:
                return
            yield batch
        marks["wall"].append(time.perf_counter())
        marks["cpu"].append(time.process_time())

    utils.UniformSample_original = timed_sample
    utils.minibatch = cut_minibatch
    torch.set_num_threads(a.threads)
    info = Procedure.BPR_train_original(dataset, rec, bpr, 0, neg_k=1, w=None)
    if len(marks["wall"]) < limit + 1:
        raise SystemExit(f"only {len(marks['wall']) - 1} batches ran")
    lo, hi = a.warmup, limit
    bs = world.config["bpr_batch_size"]
    result = {
        "code": "official", "model": a.model, "steps": a.steps, "warmup": a.warmup,
        "step_s": (marks["wall"][hi] - marks["wall"][lo]) / a.steps,
        "cpu_step_s": (marks["cpu"][hi] - marks["cpu"][lo]) / a.steps,
        "sample_epoch_s": marks["sample"][0], "sample_epoch_cpu_s": marks["sample"][1], "sampler": sampler,
        "n_samples": marks["n"], "batches_per_epoch": marks["n"] // bs + 1, "batch_size": bs,
        "setup_s": setup_s, "graph_note": "loaded from cache" if cached_graph or a.model == "mf" else "built",
        "n_users": dataset.n_users, "n_items": dataset.m_items, "n_train": dataset.trainDataSize,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "their_info": info,
        "config": {k: world.config[k] for k in ("bpr_batch_size", "latent_dim_rec", "lightGCN_n_layers", "lr",
                                                 "decay", "dropout", "A_split")},
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
