"""`worker-orcd bench`: the source checkout's benchmark on demand, never a part of the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker_orcd import cli


def test_the_package_imports_no_benchmark_code():
    code = "import sys, worker_orcd.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'bench'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_from_a_checkout_it_runs_python_m_bench(capsys):
    assert cli.bench_checkout() is not None  # the tests run from one
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: worker-orcd bench")


def test_without_a_checkout_it_says_how_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "bench_checkout", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m bench" in err and '.[bench,peer]' in err
