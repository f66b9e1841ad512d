"""Hostile input to `recsys fit` and to the run directories it writes (issue 19: fitting, configuration, runs).

Every case runs the command as a user would (:func:`recsys.testing.hostile.cli_case`) and asserts its exit status
(2: a usage error, refused before anything is built; 1: a runtime failure; 0: a correct result), its one-line
message, and that the files that existed before are byte-identical afterwards: a finished tiny run, the config
files and the data files. A refused fit also leaves no run directory behind. ``# finding N`` marks the cases that
reproduce the issue's numbered findings (each failed before its fix).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

# Imported before any command runs: Lightning attaches its console handler to the stderr of the moment it is
# first imported, and a command's captured stderr must not become that stream.
import lightning as L
import pytest
import torch
import yaml
from conftest import fit_args

from recsys.errors import UsageError
from recsys.testing.hostile import Snapshot, cli_case, run_cli

MF, POP = "mf_bpr.yaml", "pop.yaml"


class FailAt(L.Callback):
    """Raise at the start of a given epoch: a fit that fails mid-training (in-process; see tests/test_resume.py for
    SIGKILL).

    Args:
        epoch: the 0-based epoch to fail in.
    """

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"injected failure at epoch {self.epoch}")


def _fail_at(epoch: int) -> list[str]:
    return ["--trainer.callbacks", json.dumps([{"class_path": f"{__name__}.FailAt", "init_args": {"epoch": epoch}}])]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a finished tiny MF run and MostPopular run, config files, data files (all watched)."""
    root = tmp_path_factory.mktemp("hostile_fit")
    runs, cfg, data = root / "runs", root / "cfg", root / "data"
    cfg.mkdir()
    data.mkdir()
    assert run_cli(fit_args(MF, runs / "mf", epochs=1)).status == 0
    assert run_cli(fit_args(POP, runs / "pop", epochs=1)).status == 0
    # The watched runs are whole runs (a snapshot of missing files would prove nothing).
    assert all((runs / name / f).is_file() for name in ("mf", "pop") for f in ("model.pt", "timing.json"))
    files = {
        "tabs.yaml": "model:\n  class_path: recsys.model.RecModel\n  init_args:\n\tencoder: x\n",
        "syntax.yaml": "model: {class_path: [\n",
        "list_model.yaml": "model: [1, 2]\n",
        "top_list.yaml": "- model\n- data\n",
        "scalar.yaml": "just some words\n",
        "unknown_key.yaml": ("model:\n  class_path: recsys.model.RecModel\n  init_args:\n    encoder:\n"
                             "      class_path: recsys.encoders.MatrixFactorization\n      init_args:\n"
                             "        dim: 8\n        dimm: 9\n"),
        "unknown_top.yaml": "traner:\n  max_epochs: 1\n",
        "typo_key.yaml": "trainer:\n  max_epoch: 1\n",
        "wrong_type.yaml": "trainer:\n  max_epochs: one\n",
        "no_class.yaml": "model:\n  class_path: recsys.encoders.Nope\n",
        "outside_model.yaml": f"model:\n  class_path: subprocess.run\n  init_args:\n    args: [touch, {root}/PWNED]\n",
        "outside_encoder.yaml": ("model:\n  class_path: recsys.model.RecModel\n  init_args:\n    encoder:\n"
                                 "      class_path: os.system\n      init_args:\n"
                                 f"        command: touch {root}/PWNED\n"),
        "python_tag.yaml": f"model: !!python/object/apply:os.system ['touch {root}/PWNED']\n",
        "duplicate.yaml": "trainer:\n  max_epochs: 1\n  max_epochs: 2\n",
        "duplicate_top.yaml": "seed: 1\ntrainer: {max_epochs: 1}\nseed: 2\n",
        "empty.yaml": "",
        "comments.yaml": "# nothing but a comment\n",
        "ratios.yaml": "data:\n  split:\n    ratios: [0.5, 0.6, 0.7]\n",
    }
    for name, text in files.items():
        (cfg / name).write_text(text)
    (cfg / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (cfg / "latin1.yaml").write_bytes("trainer:\n  max_epochs: 1 # caf\xe9\n".encode("latin-1"))
    (cfg / "a_directory").mkdir()
    # Degenerate logs: every user has one interaction; a single interaction; users with two (no valid part by loo).
    (data / "one_each.csv").write_text("user,item,timestamp\n" + "".join(f"u{u},i{u % 20},{1000 + u}\n"
                                                                         for u in range(60)))
    (data / "single.csv").write_text("user,item,timestamp\nu1,i1,5\n")
    (data / "two_each.csv").write_text("user,item,timestamp\n" + "".join(
        f"u{u},i{(u * 7 + j) % 25},{1000 + 3 * u + j}\n" for u in range(50) for j in range(2)))
    (root / "a_file").write_text("not a directory\n")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("my own files\n")
    return root


def _watch(ws: Path) -> list[Path]:
    return [ws / "runs", ws / "cfg", ws / "data", ws / "a_file", ws / "not_a_run"]


def _fit(ws: Path, name: str, *extra: str, config: str = MF) -> tuple[list[str], Path]:
    run = ws / "new" / name
    return fit_args(config, run, *extra, epochs=1), run


def _generic(ws: Path, csv: str, options: str = "{}") -> list[str]:
    return ["--data.dataset", "generic", "--data.path", str(ws / "data" / csv), "--data.options", options]


def _refused(ws: Path, name: str, extra: list[str], status: int, message: str, config: str = MF) -> None:
    """A fit that must be refused: its status and line, nothing watched changed, and no run directory made."""
    args, run = _fit(ws, name, *extra, config=config)
    cli_case(args, status, message, unchanged=_watch(ws))
    assert not run.exists(), f"a refused fit left {run}"
    assert not (ws / "PWNED").exists(), "a config executed code"


# ------------------------------------------------------------------------------------------------ option ranges
ENC = "--model.init_args.encoder.init_args."

RANGES = [
    # finding 5: split ratios must be shares that sum to 1
    ("ratios_sum", MF, ["--data.split.ratios", "[0.5,0.6,0.7]"], r"--data\.split\.ratios must sum to 1.*1\.8"),
    ("ratios_negative", MF, ["--data.split.ratios", "[1.2,-0.1,-0.1]"], r"--data\.split\.ratios .*in \[0, 1\]"),
    ("ratios_no_train", MF, ["--data.split.ratios", "[0,0.5,0.5]"], r"train share must be above 0"),
    ("ratios_two", MF, ["--data.split.ratios", "[0.8,0.2]"], r"data\.split\.ratios: Expected a tuple with 3"),
    ("ratios_text", MF, ["--data.split.ratios", "abc"], r"data\.split\.ratios: Expected a tuple"),
    ("ratios_in_file", MF, ["--config", "{cfg}/ratios.yaml"], r"--data\.split\.ratios must sum to 1"),
    ("valid_from_train", MF, ["--data.split.valid_from_train", "1.5"], r"--data\.split\.valid_from_train .*\[0, 1\)"),
    # finding 5: every encoder with a size refuses 0 and negatives, naming itself and the option
    ("mf_dim0", MF, [ENC + "dim", "0"], r"MatrixFactorization dim must be an integer >= 1, got 0"),
    ("mf_dim_neg", MF, [ENC + "dim", "-8"], r"MatrixFactorization dim must be an integer >= 1, got -8"),
    ("lightgcn_dim0", "lightgcn.yaml", [ENC + "dim", "0"], r"LightGCN dim must be .* >= 1, got 0"),
    ("lightgcn_dim_neg", "lightgcn.yaml", [ENC + "dim", "-8"], r"LightGCN dim must be .* >= 1, got -8"),
    ("ngcf_dim_neg", "ngcf.yaml", [ENC + "dim", "-8"], r"NGCF dim must be .* >= 1, got -8"),
    ("ngcf_layers_neg", "ngcf.yaml", [ENC + "n_layers", "-1"], r"NGCF n_layers must be .* >= 0, got -1"),
    ("sasrec_dim0", "sasrec.yaml", [ENC + "dim", "0"], r"SASRec dim must be .* >= 1, got 0"),
    ("sasrec_heads", "sasrec.yaml", [ENC + "dim", "63"], r"SASRec dim 63 is not a multiple of num_heads"),
    ("alpharec_dim0", "alpharec.yaml", [ENC + "dim", "0"], r"AlphaRec dim must be .* >= 1, got 0"),
    ("probe_dim_neg", "linear_probe.yaml", [ENC + "dim", "-8"], r"LinearProbe dim must be .* >= 1, got -8"),
    ("unified_out_dim0", "unified_two_tower.yaml", [ENC + "out_dim", "0"], r"FeatureTwoTower out_dim must be .* got 0"),
    ("sesa_lm_dim0", "sesa.yaml", [ENC + "text.init_args.lm_dim", "0"], r"TextFeatures lm_dim must be .* >= 1"),
    ("matryoshka_prefix0", "mf_matryoshka.yaml", [ENC + "dim", "0"], r"prefix dim must be in \[1, "),
    # finding 5: training, model and loader options
    ("max_epochs0", MF, ["--trainer.max_epochs", "0"], r"--trainer\.max_epochs must be at least 1 .*got 0"),
    ("max_epochs_neg", MF, ["--trainer.max_epochs", "-5"], r"--trainer\.max_epochs must be at least 1 .*got -5"),
    ("max_epochs_unlimited", MF, ["--trainer.max_epochs", "-1", "--data.split.ratios", "[0.8,0,0.2]"],
     r"--trainer\.max_epochs -1 \(no limit\) needs --trainer\.max_time, --trainer\.max_steps or a validation part"),
    ("max_steps0", MF, ["--trainer.max_steps", "0"], r"--trainer\.max_steps must be at least 1"),
    ("check_val0", MF, ["--trainer.check_val_every_n_epoch", "0"], r"check_val_every_n_epoch must be at least 1"),
    ("reg_weight_neg", MF, ["--model.init_args.reg_weight", "-1"], r"RecModel reg_weight must be .* >= 0"),
    ("reg_weight_nan", MF, ["--model.init_args.reg_weight", "nan"], r"reg_weight: Expected a float\. Got value: nan"),
    ("eval_ks0", MF, ["--model.init_args.eval_ks", "[0]"], r"RecModel eval_ks must be cut-offs >= 1, got \[0\]"),
    ("eval_ks_empty", MF, ["--model.init_args.eval_ks", "[]"], r"RecModel eval_ks must be cut-offs >= 1"),
    ("num_negatives0", MF, ["--data.loader.num_negatives", "0"], r"--data\.loader\.num_negatives must be >= 1 for"),
    ("num_negatives_neg", MF, ["--data.loader.num_negatives", "-2"], r"--data\.loader\.num_negatives must be an"),
    ("batch_size0", MF, ["--data.loader.batch_size", "0"], r"--data\.loader\.batch_size must be an integer >= 1"),
    ("eval_batch0", MF, ["--data.loader.eval_batch_size", "0"], r"--data\.loader\.eval_batch_size must be"),
    ("history_neg", MF, ["--data.loader.history_len", "-1"], r"--data\.loader\.history_len must be .* >= 0"),
    ("patience_neg", MF, ["--early_stopping.patience", "-1"], r"--early_stopping\.patience must be >= 0"),
    ("monitor_typo", MF, ["--early_stopping.monitor", "valid/ndgc@20"], r"--early_stopping\.monitor 'valid/ndgc@20'"),
    ("monitor_k", MF, ["--early_stopping.monitor", "valid/ndcg@200"], r"not logged by validation.*@10/20"),
    ("seed_neg", MF, ["--seed", "-1"], r"--seed must be in \[0, 2\*\*32\)"),
    ("lr_neg", MF, ["--model.init_args.optimizer.init_args.lr", "-1"], r"optimizer is refused by torch: Invalid learn"),
    ("accelerator", MF, ["--trainer.accelerator", "gpuu"], r"--trainer options are refused by Lightning: .*gpuu"),
    ("devices0", MF, ["--trainer.devices", "0"], r"--trainer options are refused by Lightning: .*devices"),
    ("negatives_kind", MF, ["--data.loader.negatives", "unifrom"], r"expected one of uniform, popularity.*'uniform'"),
    # finding 10: a split-method typo names the allowed methods and the close one (not "needs timestamps")
    ("split_method_typo", MF, ["--data.split.method", "temporl"],
     r"data\.split\.method: expected one of auto, random, temporal, loo, global_temporal, predefined "
     r"\(given: temporl\); did you mean 'temporal'"),
    ("split_method_case", MF, ["--data.split.method", "RANDOM"], r"expected one of auto, random, temporal"),
]


@pytest.mark.parametrize("name, config, extra, message", RANGES, ids=[r[0] for r in RANGES])
def test_out_of_range_options_are_refused_before_anything_is_built(ws, name, config, extra, message):
    # finding 5: each of these used to give a "finished" run with metrics (exit 0) or a traceback
    extra = [a.format(cfg=ws / "cfg") for a in extra]
    _refused(ws, name, extra, 2, message, config=config)


def test_python_callers_get_the_same_refusals():
    # finding 5 / 10: the checks live in the constructors, so the Python API refuses what the CLI refuses
    from recsys.data.datamodule import Loader
    from recsys.data.prepared import SplitSpec
    from recsys.encoders import MatrixFactorization

    with pytest.raises(UsageError, match=r"must sum to 1"):
        SplitSpec(ratios=(0.5, 0.6, 0.7))
    with pytest.raises(UsageError, match=r"one of auto, random, .*did you mean 'temporal'"):
        SplitSpec(method="temporl")
    with pytest.raises(UsageError, match=r"batch_size must be an integer >= 1"):
        Loader(batch_size=0)
    with pytest.raises(UsageError, match=r"MatrixFactorization dim must be an integer >= 1, got 0"):
        MatrixFactorization(dim=0)
    assert SplitSpec(ratios=(1.0, 0.0, 0.0)).ratios == (1.0, 0.0, 0.0)
    assert MatrixFactorization(dim=1).out_dim == 1


# ------------------------------------------------------------------------------------------------ config files
CONFIGS = [
    ("tabs", "tabs.yaml", r"--config \S+tabs\.yaml: is not valid YAML: .*line 4, column 1 \(a tab"),
    ("syntax", "syntax.yaml", r"--config \S+syntax\.yaml: is not valid YAML: .*line 2"),
    ("list_model", "list_model.yaml", r"--config \S+list_model\.yaml: model: Subclass types expect"),
    ("top_list", "top_list.yaml", r"--config \S+top_list\.yaml: holds a list, not a mapping of options"),
    ("scalar", "scalar.yaml", r"--config \S+scalar\.yaml: holds a str, not a mapping"),
    ("unknown_key", "unknown_key.yaml", r"Option 'dimm' is not accepted; did you mean dim\?"),
    ("unknown_top", "unknown_top.yaml", r"unknown_top\.yaml: Option 'traner\.max_epochs' is not accepted; did you mean "
                                      r"trainer\.max_epochs\?"),
    ("typo_key", "typo_key.yaml", r"typo_key\.yaml: Group 'trainer' does not accept option 'max_epoch'; did you "
                                  r"mean trainer\.max_epochs"),
    ("wrong_type", "wrong_type.yaml", r"--config \S+wrong_type\.yaml: trainer\.max_epochs: Expected an int"),
    ("no_class", "no_class.yaml", r"no_class\.yaml: model: module 'recsys\.encoders' has no attribute 'Nope'"),
    ("outside_model", "outside_model.yaml", r"Import path subprocess\.run does not correspond to a subclass of"),
    ("outside_encoder", "outside_encoder.yaml", r"Import path os\.system does not correspond to a subclass of "
                                                r"TwoSidedEncoder"),
    ("python_tag", "python_tag.yaml", r"python_tag\.yaml: is not valid YAML: could not determine a constructor"),
    ("duplicate", "duplicate.yaml", r"duplicate\.yaml: is not valid YAML: duplicate key 'max_epochs' \(first at "
                                    r"line 2\) at line 3"),
    ("duplicate_top", "duplicate_top.yaml", r"duplicate key 'seed' \(first at line 1\) at line 3"),
    ("empty", "empty.yaml", r"--config \S+empty\.yaml: is empty"),
    ("comments", "comments.yaml", r"--config \S+comments\.yaml: is empty"),
    ("binary", "binary.yaml", r"--config \S+binary\.yaml: is a binary file"),
    ("latin1", "latin1.yaml", r"--config \S+latin1\.yaml: is not UTF-8 text \(byte 0xe9 at offset 30\)"),
    ("directory", "a_directory", r"--config '\S+a_directory' is a directory, not a YAML file"),
    ("missing", "missing.yaml", r"--config '\S+missing\.yaml' is neither a file nor a packaged config"),
]


@pytest.mark.parametrize("name, file, message", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_malformed_config_files_are_one_line_naming_the_file(ws, name, file, message):
    # The packaged config first, the hostile file over it: as a user layers their own file on a packaged one.
    _refused(ws, name, ["--config", str(ws / "cfg" / file)], 2, message)


# ------------------------------------------------------------------------------------------------ command line
OPTIONS = [
    ("unknown", ["--seeed", "3"], r"unrecognized arguments: --seeed 3; did you mean --seed\?"),
    ("typo", ["--trainer.max_epohcs", "3"], r"unrecognized arguments: --trainer\.max_epohcs.*--trainer\.max_epochs"),
    # an abbreviation is not silently expanded (it used to be: --trainer.max_epoch meant --trainer.max_epochs)
    ("abbreviation", ["--trainer.max_epoch", "3"], r"unrecognized arguments: --trainer\.max_epoch 3; did you mean "
                                                   r"--trainer\.max_epochs"),
    ("abbreviation2", ["--data.split.ratio", "[1,0,0]"], r"did you mean --data\.split\.ratios"),
    ("nested", [ENC + "dimm", "3"], r"model\.encoder: Option 'dimm' is not accepted; did you mean dim\?"),
    ("nested_value", [ENC + "init", "nrmal"], r"expected one of normal, xavier \(given: nrmal\); did you mean "
                                              r"'normal'"),
    # finding 2 at fit time: a class_path outside the declared base types, on the command line
    ("class_encoder", ["--model.init_args.encoder.class_path", "os.system"],
     r"Import path os\.system does not correspond to a subclass of TwoSidedEncoder"),
    ("class_model", ["--model.class_path", "builtins.eval"], r"Import path builtins\.eval does not correspond"),
    ("class_callback", ["--trainer.callbacks", '[{"class_path": "subprocess.run"}]'], r"trainer\.callbacks"),
    ("empty_run_dir", ["--run-dir", ""], r"--run-dir is empty"),
    ("empty_config", ["--config", ""], r"--config is empty"),
    ("max_epochs_text", ["--trainer.max_epochs", "abc"], r"trainer\.max_epochs: Expected an int \(given: abc\)"),
]


@pytest.mark.parametrize("name, extra, message", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_unknown_and_mistyped_options_suggest_the_close_one(ws, name, extra, message):
    _refused(ws, name, extra, 2, message)


@pytest.mark.parametrize("args, message", [
    (["--resume"], r"--resume needs a value"),
    (["--resume", "{runs}/mf", "--overwrite"], r"--overwrite replaces a run and --resume continues one"),
    (["--resume", "{runs}/mf", "--config", "mf_bpr"], r"--resume continues a run with its own config\.yaml"),
    (["--resume", "{runs}/mf", "--run-dir", "{runs}/other"], r"--resume RUN continues the run in RUN: drop --run"),
], ids=["no_value", "with_overwrite", "with_config", "with_run_dir"])
def test_resume_option_combinations(ws, args, message):
    cli_case(["fit", *(a.format(runs=ws / "runs") for a in args)], 2, message, unchanged=_watch(ws))
    assert not (ws / "runs" / "other").exists()


# ------------------------------------------------------------------------------------------------ run directories
def test_a_refit_into_a_finished_run_is_refused_and_changes_nothing(ws):
    # finding 4: this used to rewrite config.yaml first (evaluate then failed with a size mismatch)
    args = fit_args(MF, ws / "runs" / "mf", "--model.init_args.encoder.init_args.dim", "16", epochs=1)
    cli_case(args, 2, r"--run-dir '\S+/mf' already holds a run: pass --overwrite to replace it .*--resume",
             unchanged=_watch(ws))


@pytest.mark.parametrize("target, status, message", [
    ("a_file", 2, r"--run-dir '\S+a_file' is not a directory"),
    ("a_file/run", 2, r"--run-dir '\S+a_file/run': '\S+a_file' is not a directory"),
    ("not_a_run", 2, r"--run-dir '\S+not_a_run' exists and is not a run directory \(it holds notes\.txt"),
    ("/proc/recsys-hostile-run", 1, r"--run-dir '/proc/recsys-hostile-run' cannot be made"),
    ("/dev/null/run", 2, r"'/dev/null' is not a directory"),
], ids=["file", "under_file", "not_a_run", "unwritable", "under_device"])
def test_run_dir_that_cannot_hold_a_run(ws, target, status, message):
    path = target if target.startswith("/") else str(ws / target)
    cli_case(fit_args(MF, path, epochs=1), status, message, unchanged=_watch(ws))


@pytest.mark.parametrize("kind, message", [
    ("symlink", r"is a symbolic link: --overwrite replaces a directory"),
    ("config_only", r"has a config\.yaml but nothing else a run holds"),
    ("not_a_run", r"exists and is not a run directory"),
])
def test_overwrite_deletes_only_a_run(ws, tmp_path, kind, message):
    # --overwrite deletes what is in --run-dir: only ever a run directory, never the user's own files
    target = tmp_path / "target"
    if kind == "symlink":
        target.symlink_to(ws / "runs" / "mf", target_is_directory=True)
    elif kind == "config_only":
        target.mkdir()
        (target / "config.yaml").write_text("my: own config\n")
    else:
        target = ws / "not_a_run"
    cli_case(["fit", "--overwrite", *fit_args(MF, target, epochs=1)[1:]], 2, message,
             unchanged=[target, *_watch(ws)])
    assert target.exists()


def test_default_run_dir_under_a_file(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs/ folder goes\n")
    args = [a for a in fit_args(MF, "unused", epochs=1) if a not in ("--run-dir", "unused")]
    cli_case(args, 1, r"run directory 'runs/\S+' cannot be made: (a parent is not a directory|Not a directory)",
             unchanged=[tmp_path, *_watch(ws)])


def test_overwrite_refuses_the_working_directory(ws, tmp_path, monkeypatch):
    here = tmp_path / "project"
    shutil.copytree(ws / "runs" / "mf", here)
    monkeypatch.chdir(here)
    cli_case(["fit", "--overwrite", *fit_args(MF, ".", epochs=1)[1:]], 2,
             r"is the working directory, one above it or the home directory", unchanged=[here, *_watch(ws)])


@pytest.fixture
def finished_copy(ws, tmp_path):
    """A copy of the finished MF run that a case may replace."""
    run = tmp_path / "run"
    shutil.copytree(ws / "runs" / "mf", run)
    return run


def _no_aside(run: Path) -> None:
    left = [p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.replaced")]
    assert not left, f"moved-aside runs left behind: {left}"


def test_overwrite_whose_data_fail_keeps_the_old_run(ws, finished_copy):
    # finding 4: the old run is replaced only once the new data are prepared
    args = ["fit", "--overwrite", *fit_args(MF, finished_copy, *_generic(ws, "one_each.csv"), epochs=1)[1:]]
    cli_case(args, 1, r"valid and test are empty: every user has fewer than 2 interactions",
             unchanged=[finished_copy, *_watch(ws)])
    _no_aside(finished_copy)


def test_overwrite_whose_training_fails_puts_the_old_run_back(ws, finished_copy):
    # finding 4: a failure after the old run was moved aside restores it, byte for byte
    args = ["fit", "--overwrite", *fit_args(MF, finished_copy, *_fail_at(0), epochs=1)[1:]]
    cli_case(args, 1, r"injected failure at epoch 0", unchanged=[finished_copy, *_watch(ws)])
    _no_aside(finished_copy)


def test_overwrite_replaces_the_run_once_the_new_one_is_finished(ws, finished_copy):
    args = ["fit", "--overwrite", *fit_args(MF, finished_copy, "--seed", "7", epochs=1)[1:]]
    cli_case(args, 0, unchanged=_watch(ws))
    assert yaml.safe_load((finished_copy / "config.yaml").read_text())["seed"] == 7
    assert (finished_copy / "timing.json").is_file() and (finished_copy / "model.pt").is_file()
    _no_aside(finished_copy)
    # The replaced run is whole: it evaluates.
    cli_case(["evaluate", "--run-dir", str(finished_copy)], 0, unchanged=_watch(ws), allow_new=True)


def test_a_fit_that_fails_before_its_first_epoch_leaves_no_directory(ws):
    args, run = _fit(ws, "fails_early", *_fail_at(0))
    cli_case(args, 1, r"injected failure at epoch 0", unchanged=_watch(ws))
    assert not run.exists()


def test_two_fits_in_the_same_second_get_two_directories(ws, tmp_path, monkeypatch):
    # finding 4: without --run-dir both used runs/<second>-mf_bpr and exited 0, one run lost
    import time
    import types

    import recsys.fitting

    monkeypatch.chdir(tmp_path)
    # The clock the default name reads, stopped: both fits start "in the same second".
    clock = types.SimpleNamespace(strftime=lambda fmt, *a: "20260101-000000", perf_counter=time.perf_counter)
    monkeypatch.setattr(recsys.fitting, "time", clock)
    args = [a for a in fit_args(MF, "unused", epochs=1) if a not in ("--run-dir", "unused")]
    cli_case(args, 0, unchanged=_watch(ws))
    first = tmp_path / "runs" / "20260101-000000-mf_bpr"
    snap = Snapshot(first)
    cli_case(args, 0, unchanged=_watch(ws))
    snap.assert_unchanged()
    second = tmp_path / "runs" / "20260101-000000-mf_bpr-2"
    assert (first / "model.pt").is_file() and (second / "model.pt").is_file()
    assert yaml.safe_load((second / "config.yaml").read_text())["run_dir"] == "runs/20260101-000000-mf_bpr-2"


# ------------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def interrupted(ws):
    """A run that failed in its second epoch: config, data and a full checkpoints/last.ckpt, no model."""
    run = ws / "interrupted"
    res = run_cli(fit_args(MF, run, *_fail_at(1), epochs=3))
    assert res.status == 1 and "injected failure at epoch 1" in res.err
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "model.pt").exists()
    return run


def _broken_copy(interrupted: Path, tmp_path: Path, how: str) -> Path:
    run = tmp_path / "broken"
    shutil.copytree(interrupted, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    if how == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif how == "garbage":
        ckpt.write_bytes(b"\x00garbage" * 100)
    elif how == "empty":
        ckpt.write_bytes(b"")
    elif how == "not_lightning":
        torch.save({"weights": torch.zeros(2)}, ckpt)
    elif how == "no_ckpt":
        ckpt.unlink()
    elif how == "finished":
        (run / "timing.json").write_text("{}\n")
    return run


@pytest.mark.parametrize("how, status, message", [
    ("truncated", 1, r"cannot resume from '\S+last\.ckpt': it is truncated, corrupted or not a checkpoint"),
    ("garbage", 1, r"cannot resume from '\S+last\.ckpt': it is truncated, corrupted"),
    ("empty", 1, r"cannot resume from '\S+last\.ckpt': it is truncated, corrupted"),
    ("not_lightning", 1, r"cannot resume from '\S+last\.ckpt': not a full Lightning checkpoint"),
    ("no_ckpt", 1, r"no checkpoints/last\.ckpt"),
    ("finished", 1, r"the run is finished \(timing\.json\); --resume continues an interrupted fit"),
])
def test_resume_refuses_a_broken_run_and_changes_nothing(ws, interrupted, tmp_path, how, status, message):
    run = _broken_copy(interrupted, tmp_path, how)
    cli_case(["fit", "--resume", str(run)], status, message, unchanged=[run, interrupted, *_watch(ws)])


@pytest.mark.parametrize("target, message", [
    ("not_a_run", r"--resume '\S+not_a_run': no config\.yaml there \(not a run directory\)"),
    ("a_file", r"--resume '\S+a_file' is not a directory"),
    ("nowhere", r"--resume '\S+nowhere' does not exist"),
])
def test_resume_of_what_is_not_a_run(ws, target, message):
    cli_case(["fit", "--resume", str(ws / target)], 1, message, unchanged=_watch(ws))


def test_resume_of_an_interrupted_run_finishes_it(ws, interrupted, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(interrupted, run)
    config = (run / "config.yaml").read_bytes()
    cli_case(["fit", "--resume", str(run), "--trainer.callbacks", "[]"], 0, unchanged=_watch(ws))
    assert (run / "model.pt").is_file() and json.loads((run / "metrics.json").read_text())
    # The run's own config.yaml is what it resumed with; options given with --resume are recorded.
    assert yaml.safe_load((run / "config.yaml").read_bytes())["trainer"]["callbacks"] == []
    assert yaml.safe_load(config)["trainer"]["callbacks"]


# ------------------------------------------------------------------------------------------------ degenerate data
@pytest.mark.parametrize("config, csv, extra, message", [
    (MF, "one_each.csv", [], r"valid and test are empty: every user has fewer than 2 interactions"),
    (POP, "one_each.csv", [], r"valid and test are empty: every user has fewer than 2 interactions"),
    ("ease.yaml", "one_each.csv", [], r"valid and test are empty: every user has fewer than 2 interactions"),
    (POP, "single.csv", [], r"valid and test are empty: every user has fewer than 2 interactions"),
    (MF, "one_each.csv", ["--data.options", "{timestamp: timestamp}", "--data.split.method", "loo"],
     r"valid and test are empty: every user has fewer than 2 interactions"),
    (MF, "one_each.csv", ["--data.options", "{timestamp: timestamp}", "--data.split.method", "global_temporal",
                          "--data.split.ratios", "[0,0.5,0.5]"], r"train share must be above 0"),
], ids=["mf", "pop", "ease", "single_interaction", "loo", "no_train"])
def test_degenerate_data_fail_before_anything_is_written(ws, config, csv, extra, message):
    # finding 7: MF crashed in Lightning's EarlyStopping; MostPopular wrote model.pt, then failed with
    # "no user has a relevant item", leaving a run without metrics
    status = 2 if "share" in message else 1
    _refused(ws, f"degenerate-{config}-{csv}", [*_generic(ws, csv), *extra], status, message, config=config)


@pytest.mark.parametrize("config", [MF, POP])
def test_degenerate_data_train_on_everything_when_asked(ws, config):
    # --data.split.ratios [1,0,0] holds nothing out by design: a finished run with empty metrics and a note
    args, run = _fit(ws, f"all-{config}", *_generic(ws, "one_each.csv"), "--data.split.ratios", "[1,0,0]",
                     config=config)
    res = cli_case(args, 0, unchanged=_watch(ws))
    assert "no test interactions: metrics.json is empty" in res.out
    assert json.loads((run / "metrics.json").read_text()) == {} and (run / "model.pt").is_file()


def test_users_with_two_interactions_train_without_validation(ws):
    # loo gives each user train + test and no validation part: the documented no-valid path, with test metrics
    args, run = _fit(ws, "loo-two", *_generic(ws, "two_each.csv", "{timestamp: timestamp}"),
                     "--data.split.method", "loo", config=POP)
    cli_case(args, 0, unchanged=_watch(ws))
    assert json.loads((run / "metrics.json").read_text())["ndcg@20"] >= 0
    assert json.loads((run / "valid_metrics.json").read_text()) == {}


# ------------------------------------------------------------------------------------------------ finding 2
PAYLOADS = {
    "subprocess_run": ("encoder", {"class_path": "subprocess.run", "init_args": {"args": ["touch", "{marker}"]}}),
    "os_system": ("model", {"class_path": "os.system", "init_args": {"command": "touch {marker}"}}),
    "builtins_eval": ("model", {"class_path": "builtins.eval", "init_args": {"source": "open('{marker}', 'w')"}}),
}


def _plant(source, tmp_path, payload: str):
    """A copy of the run ``source`` whose config.yaml names a callable that would create a marker file."""
    run, marker = tmp_path / "attacked", tmp_path / "PWNED"
    shutil.copytree(source, run)
    where, spec = PAYLOADS[payload]
    spec = json.loads(json.dumps(spec).replace("{marker}", str(marker)))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    if where == "encoder":
        cfg["model"]["init_args"]["encoder"] = spec
    else:
        cfg["model"] = spec
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run, marker


def _attacked(ws: Path, tmp_path: Path, source: str, payload: str, rehash: bool) -> tuple[Path, Path]:
    """A copy of a finished run whose config.yaml names a callable that would create ``marker``.

    With ``rehash``, model.pt's recorded config sha256 is rewritten to the edited file's, so that the hash check is
    not what stops it: the declared-base-type validation must.
    """
    run, marker = _plant(ws / "runs" / source, tmp_path, payload)
    text = (run / "config.yaml").read_text()
    if rehash:
        payload_dict = torch.load(run / "model.pt", weights_only=True)
        payload_dict["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        torch.save(payload_dict, run / "model.pt")
    return run, marker


@pytest.mark.parametrize("rehash", [False, True], ids=["hash_check", "type_check"])
@pytest.mark.parametrize("source, payload, command", [
    ("mf", "subprocess_run", "evaluate"),
    ("mf", "os_system", "evaluate"),
    ("pop", "builtins_eval", "evaluate"),
    ("pop", "os_system", "score"),          # MostPopular stores no tables: score rebuilds the model
    ("pop", "builtins_eval", "score"),
])
def test_a_config_naming_a_callable_runs_nothing(ws, tmp_path, source, payload, command, rehash):
    # finding 2: `recsys evaluate` of a copied run whose encoder class_path was subprocess.run ran the command
    run, marker = _attacked(ws, tmp_path, source, payload, rehash)
    out = tmp_path / "top.parquet"
    args = (["evaluate", "--run-dir", str(run)] if command == "evaluate"
            else ["score", "--run-dir", str(run), "--k", "3", "--out", str(out)])
    message = (r"config\.yaml of run '\S+' was changed after fit \(sha256" if not rehash
               else r"config\.yaml of run '\S+' is refused: model(\.encoder)?: Import path \S+ does not correspond "
                    r"to a subclass of")
    cli_case(args, 1, message, unchanged=[run, *_watch(ws)])
    assert not out.exists()
    assert not marker.exists(), "the config executed code"


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_resume_of_a_config_naming_a_callable_runs_nothing(ws, interrupted, tmp_path, payload):
    # finding 2: an interrupted run has no model.pt (no hash): the fit parser's declared types are the barrier
    run, marker = _plant(interrupted, tmp_path, payload)
    cli_case(["fit", "--resume", str(run)], 2,
             r"--config \S+config\.yaml: model(\.encoder)?: Import path \S+ does not correspond to a subclass of",
             unchanged=[run, *_watch(ws)])
    assert not marker.exists(), "the config executed code"


def test_score_from_stored_tables_never_builds_the_config(ws, tmp_path):
    # MF stores its tables: `recsys score` serves them without instantiating config.yaml at all
    run, marker = _attacked(ws, tmp_path, "mf", "subprocess_run", rehash=True)
    out = tmp_path / "top.parquet"
    cli_case(["score", "--run-dir", str(run), "--k", "3", "--out", str(out)], 0, unchanged=[run, *_watch(ws)],
             allow_new=True)
    assert out.is_file() and not marker.exists()
