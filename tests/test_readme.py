"""The README's Python section runs as written (from a directory beside ../shared, as in the checkout)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def python_section() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python section has no code block"
    return "\n".join(blocks)


def test_readme_python_section_runs(tmp_path):
    if not (SHARED / "datasets" / "ml-latest-small" / "ratings.csv").exists():
        pytest.skip("../shared/datasets/ml-latest-small is not available")
    (tmp_path / "shared").symlink_to(SHARED)
    work = tmp_path / "work"
    work.mkdir()
    (work / "readme.py").write_text(python_section())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "readme.py"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "runs" / "kept-mf" / "model.pt").exists()
    assert (work / "runs" / "notebook-mf-embeddings" / "items.parquet").exists()
