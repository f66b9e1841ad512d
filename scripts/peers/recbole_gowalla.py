"""RecBole 1.2.1 on Gowalla: time ``steps`` batches of its own ``Trainer._train_epoch`` after ``warmup`` batches.

Run with RecBole's venv python (``~/.cache/recsys-peers/recbole``, made as ``../shared/peers/recbole_p1.sh`` makes it);
``scripts/bench_gowalla.py`` calls it. Gowalla's ``uid iid iid ...`` train.txt / test.txt become RecBole atomic files
(``user_id:token<TAB>item_id:token``) read with ``benchmark_filename: [train, valid, test]``; valid and test are the
first 100 test users' items (timing only, nothing is evaluated). Training is RecBole's own: its ``TrainDataLoader``
(per interaction: every training interaction once per epoch in shuffled order, one uniform negative each,
``train_batch_size`` 2048) fed to ``Trainer._train_epoch``, stopped after ``warmup + steps`` batches by handing it
the loader through a wrapper that ends the iteration there and stamps the time at each batch request.

Prints ``RESULT {json}`` with ``step_s`` (wall seconds per step) and ``cpu_step_s`` (process CPU seconds per step).

Usage:
  python recbole_gowalla.py --model LightGCN --data ../shared/datasets/gowalla --steps 30 --warmup 3
"""
import argparse
import json
import os
import pathlib
import tempfile
import time

import torch

_load = torch.load  # RecBole saves whole objects; torch >= 2.6 defaults to weights_only=True.
torch.load = lambda *a, **k: _load(*a, **{**k, "weights_only": False})


def write_atomic(src: pathlib.Path, out: pathlib.Path, n_eval_users: int = 100) -> int:
    """Gowalla's txt files as RecBole atomic files; returns the training interactions written."""
    out.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token\n"
    n = 0
    with open(src / "train.txt") as fh, open(out / "gowalla.train.inter", "w") as w:
        w.write(header)
        for line in fh:
            t = line.split()
            for i in t[1:]:
                w.write(f"{t[0]}\t{i}\n")
                n += 1
    rows = []
    with open(src / "test.txt") as fh:
        for line in fh:
            t = line.split()
            if len(t) > 1:
                rows.extend(f"{t[0]}\t{i}\n" for i in t[1:])
                n_eval_users -= 1
                if n_eval_users == 0:
                    break
    for name in ("valid", "test"):
        (out / f"gowalla.{name}.inter").write_text(header + "".join(rows))
    return n


class Stamped:
    """The train loader, cut after ``limit`` batches, with the wall and CPU time of each batch request."""

    def __init__(self, loader, limit: int) -> None:
        self.loader, self.limit = loader, limit
        self.wall, self.cpu = [], []
        self.shuffle = getattr(loader, "shuffle", False)
        self.sampler = getattr(loader, "sampler", None)

    def __len__(self) -> int:
        return min(self.limit, len(self.loader))

    def __iter__(self):
        it = iter(self.loader)
        for _ in range(self.limit):
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())
            try:
                batch = next(it)
            except StopIteration:
                return
            yield batch
        # The request after the last batch: the end of the last step.
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, choices=["BPR", "LightGCN", "NGCF"])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--node-dropout", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    t0 = time.perf_counter()
    work = pathlib.Path(tempfile.mkdtemp(prefix="recbole-gowalla-"))
    n_train = write_atomic(pathlib.Path(a.data), work / "gowalla")
    cfg = {
        "data_path": str(work), "checkpoint_dir": str(work / "saved"), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]}, "train_batch_size": a.batch, "eval_batch_size": 4096,
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                                  "candidate_num": 0},
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"},
        "embedding_size": 64, "learner": "adam", "learning_rate": 1e-3, "show_progress": False, "use_gpu": False,
        "worker": 0, "seed": 2026, "epochs": 1, "save_dataset": False, "save_dataloaders": False,
        "user_inter_num_interval": None, "item_inter_num_interval": None,
    }
    if a.model == "LightGCN":
        cfg.update({"n_layers": 3, "reg_weight": 1e-4})
    elif a.model == "NGCF":
        cfg.update({"hidden_size_list": [64, 64, 64], "node_dropout": a.node_dropout, "message_dropout": 0.1,
                    "reg_weight": 1e-5})
    config = Config(model=a.model, dataset="gowalla", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    setup_s = time.perf_counter() - t0
    torch.set_num_threads(a.threads)  # in case RecBole's setup changed it
    stamped = Stamped(train, a.warmup + a.steps)
    trainer._train_epoch(stamped, 0, show_progress=False)
    if len(stamped.wall) < a.warmup + a.steps + 1:
        raise SystemExit(f"only {len(stamped.wall) - 1} batches ran")
    lo, hi = a.warmup, a.warmup + a.steps
    result = {
        "code": "recbole", "model": a.model, "steps": a.steps, "warmup": a.warmup,
        "step_s": (stamped.wall[hi] - stamped.wall[lo]) / a.steps,
        "cpu_step_s": (stamped.cpu[hi] - stamped.cpu[lo]) / a.steps,
        "setup_s": setup_s, "batch_size": train.batch_size, "batches_per_epoch": len(train),
        "n_train": n_train, "n_train_recbole": len(train._dataset), "n_users": dataset.user_num,
        "n_items": dataset.item_num, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "notes": ("per-interaction sampling, 1 uniform negative"
                  + (f", node_dropout {a.node_dropout}, message_dropout 0.1" if a.model == "NGCF" else "")
                  + ("" if a.model == "BPR" else ", n_layers 3")),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
