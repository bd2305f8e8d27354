"""The benchmark is the source checkout's `python -m bench`, never a part of the package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import cli as bench_cli
from worker_orcd import cli

PACKAGE = Path(cli.__file__).resolve().parent


def test_the_package_imports_no_benchmark_code():
    code = "import sys, worker_orcd.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'bench'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_no_module_of_the_package_names_the_benchmark():
    importing = re.compile(r"^\s*(from|import)\s+bench\b", re.MULTILINE)
    assert [p.name for p in PACKAGE.rglob("*.py") if importing.search(p.read_text())] == []


def test_from_a_checkout_it_runs_as_python_m_bench(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_cli.main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m bench")


def test_worker_orcd_has_no_bench_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--quick"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err
