"""recsys imports in one direction only: data → nn → ranking → training/serving → cli (``recsys.testing`` on top).

A static check (``ast``, no import is executed): every ``import`` / ``from ... import`` of a ``recsys`` module, at
module level or inside a function, must point to the importer's own (sub)layer or a lower one. Importing
``recsys.a.b`` also runs the package ``recsys/a/__init__.py``, so that package must be at or below the importer too
(unless it is one of the importer's own packages).

Imports under ``if TYPE_CHECKING:`` do NOT count: they are types for annotations only and never run (every module
uses ``from __future__ import annotations``). Dynamic imports (``importlib.import_module`` of a name read from a
checkpoint, in ``recsys.runs``) are not seen.

Every module under ``recsys/`` must match a row of :data:`LAYERS`, so a new file forces a decision here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "recsys"

#: (sub)layers from the bottom up; a module may import its own rank or a lower one. ``layer:part`` is a part of
#: ``layer`` with an order of its own inside it.
RANKS = (
    "data",             # errors, io helpers, data core (vocab, splits, prepared data, features), text flattening
    "data:datasets",    # dataset loaders read files through recsys.data.io; they never see the DataModule
    "data:datamodule",  # the Lightning DataModule loads a dataset by name and prepares it
    "nn",               # capabilities, scorers, losses, the LM text service
    "nn:encoders",      # encoders use scorers and losses; scorers and losses never import an encoder
    "ranking",          # metrics, top-k, cascades, item indexes, retrieval structures
    "serving",          # RecModel, baselines, training strategies, runs, recommenders, evaluation, scoring jobs
    "cli",
    "testing",          # may import anything except the CLI (see FORBIDDEN)
)

#: module pattern → rank. ``x.*`` is ``x`` and everything under it; any other pattern is that one module (a package
#: pattern means its ``__init__.py``). The longest matching pattern wins. Rows may name modules that do not exist yet.
LAYERS = {
    "recsys": "data",  # the root __init__: a docstring and __version__; every import runs it
    "recsys.errors": "data",
    "recsys.io_utils": "data",
    "recsys.progress": "data",
    "recsys.data.*": "data",
    "recsys.data.datamodule": "data:datamodule",
    "recsys.data.examples": "data:datamodule",  # example builders make the DataModule's training datasets
    "recsys.datasets.*": "data:datasets",
    "recsys.text.flatten": "data",
    "recsys.text.recformer_tokens": "data",

    "recsys.capabilities": "nn",
    "recsys.scorers": "nn",
    "recsys.losses": "nn",
    "recsys.text": "nn",  # the package re-exports recsys.text.lm
    "recsys.text.lm": "nn",
    "recsys.encoders.*": "nn:encoders",
    "recsys.encoders.graph_kernels": "nn:encoders",  # numba kernels of the graph encoders (numba imported lazily)

    "recsys.metrics": "ranking",  # the package re-exports ranking, beyond and significance, not evaluate
    "recsys.metrics.ranking": "ranking",
    "recsys.metrics.significance": "ranking",
    "recsys.metrics.beyond": "ranking",
    "recsys.metrics.report": "ranking",
    "recsys.scoring": "ranking",  # every import of recsys.scoring.topk runs it: it must stay free of serving code
    "recsys.scoring.topk": "ranking",
    "recsys.scoring.cascade": "ranking",
    "recsys.scoring.index.*": "ranking",
    "recsys.scoring.index_pq": "ranking",
    "recsys.scoring.faiss_index": "ranking",
    "recsys.retrieval.*": "ranking",

    "recsys.model": "serving",
    "recsys.baselines.*": "serving",  # a Baseline is a Recommender (recsys.recommender), fitted without Lightning
    "recsys.training.*": "serving",
    "recsys.config": "serving",
    "recsys.plots": "serving",
    "recsys.runs": "serving",
    "recsys.fitting": "serving",
    "recsys.transfer": "serving",
    "recsys.upgrades": "serving",
    "recsys.tuning": "serving",
    "recsys.api": "serving",
    "recsys.recommender": "serving",
    "recsys.metrics.evaluate": "serving",
    "recsys.metrics.cold": "serving",
    "recsys.scoring.batch": "serving",
    "recsys.scoring.predict": "serving",
    "recsys.scoring.export": "serving",
    "recsys.scoring.new_items": "serving",
    "recsys.scoring.explain": "serving",
    "recsys.scoring.fold_in": "serving",

    "recsys.packaged_configs": "serving",

    "recsys.cli.*": "cli",
    "recsys.__main__": "cli",

    "recsys.testing.*": "testing",
}

#: (importer pattern, imported pattern): edges the rank order allows but the architecture does not.
FORBIDDEN = (
    ("recsys.testing.*", "recsys.cli.*"),
    ("recsys.testing.*", "recsys.__main__"),
)
#: importers exempt from FORBIDDEN: the adversarial-test driver runs commands as a user types them.
EXEMPT = ("recsys.testing.hostile",)


def _matches(pattern: str, module: str) -> bool:
    if pattern.endswith(".*"):
        base = pattern[:-2]
        return module == base or module.startswith(base + ".")
    return module == pattern


def rank_of(module: str) -> str | None:
    """The rank of a module by its most specific row of :data:`LAYERS`, or None when no row matches."""
    hits = [p for p in LAYERS if _matches(p, module)]
    return LAYERS[max(hits, key=len)] if hits else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module under ``recsys/``, by dotted name."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every ``recsys`` import in a module's source, TYPE_CHECKING blocks excepted.

    ``from recsys.a import b`` is an import of ``recsys.a.b`` when that is a module (in ``known``), else of
    ``recsys.a``; relative imports are resolved against ``module``.
    """
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "recsys")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "recsys":
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    found.append((node.lineno, sub if sub in known else target))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def back_edges() -> list[str]:
    """One line per import against the layer order: ``file:line: importer (rank) imports target (rank)``."""
    mods = modules()
    known = set(mods)
    order = {r: i for i, r in enumerate(RANKS)}
    problems = []
    for name, path in mods.items():
        mine = rank_of(name)
        if mine is None:
            continue  # reported by test_every_module_has_a_layer
        own = set(_ancestors(name)) | {name}
        for line, target in imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known):
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            # the target, then every package its import runs first (the importer's own packages already ran)
            for dep in [target] + [p for p in _ancestors(target) if p not in own]:
                theirs = rank_of(dep)
                via = "" if dep == target else f" (via {target})"
                if theirs is None:
                    problems.append(f"{where}: {name} ({mine}) imports {dep}{via}, which has no layer")
                elif order[theirs] > order[mine]:
                    problems.append(f"{where}: {name} ({mine}) imports {dep} ({theirs}){via}")
            for imp, dep in FORBIDDEN:
                if _matches(imp, name) and _matches(dep, target) and name not in EXEMPT:
                    problems.append(f"{where}: {name} ({mine}) imports {target}: forbidden")
    return list(dict.fromkeys(problems))


def test_every_module_has_a_layer():
    unmapped = [f"{p.relative_to(ROOT.parent)} ({m})" for m, p in modules().items() if rank_of(m) is None]
    assert not unmapped, "modules without a layer (add a row to LAYERS in tests/test_layers.py):\n" + "\n".join(
        unmapped)


def test_table_names_known_ranks():
    assert set(LAYERS.values()) <= set(RANKS)


def test_imports_flow_one_way():
    problems = back_edges()
    assert not problems, f"{len(problems)} import(s) against the layer order:\n" + "\n".join(problems)


def test_checker_sees_function_imports_and_skips_type_checking():
    src = """
from __future__ import annotations
from typing import TYPE_CHECKING
import recsys.errors
from recsys.data import batch, nothing
from . import sibling
if TYPE_CHECKING:
    from recsys.model import RecModel
else:
    from recsys.runs import Run

def f():
    from recsys.scoring.topk import topk
"""
    known = {"recsys.data.batch", "recsys.data.sibling"}
    got = imports(src, "recsys.data.x", False, known)
    assert [m for _, m in got] == ["recsys.errors", "recsys.data.batch", "recsys.data", "recsys.data.sibling",
                                   "recsys.runs", "recsys.scoring.topk"]
    assert rank_of("recsys.scoring") == "ranking" and rank_of("recsys.scoring.batch") == "serving"
    assert rank_of("recsys.data.datamodule") == "data:datamodule" and rank_of("recsys.data.vocab") == "data"
    assert rank_of("recsys.datastuff") is None  # ``recsys.data.*`` does not match a sibling name
