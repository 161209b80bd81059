"""The public API: ``import ferlab`` names, their runnable docstring examples, the README's
five-line script."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ferlab
import ferlab.api
from conftest import REPO


def test_top_level_names() -> None:
    for name in ("run", "train", "evaluate", "load_dataset", "create_model", "list_models",
                 "load_model"):  # fmt: skip
        assert name in ferlab.__all__
        assert callable(getattr(ferlab, name)), name
        assert ">>> " in (getattr(ferlab, name).__doc__ or "") or name not in (
            "run",
            "train",
            "evaluate",
        )
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ferlab.nope  # type: ignore[attr-defined]


def test_import_ferlab_is_light() -> None:
    code = "import sys, ferlab; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
@pytest.mark.parametrize("module", [ferlab, ferlab.api], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert "import ferlab" in block and len(block.strip().splitlines()) <= 5
    env = dict(os.environ, HOME=str(tmp_path))  # its cache goes to ~/.cache/ferlab
    out = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"accuracy \d+\.\d%", out.stdout), out.stdout
    assert (tmp_path / "runs" / "train_synthetic_lab" / "report.html").is_file()
