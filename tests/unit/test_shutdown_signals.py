"""The server's signal handler (WO-SHUT-1): a second signal is a forced exit, even one that
comes while the first is still being handled."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import uvicorn

from worker_orcd import server as server_module
from worker_orcd.server import WorkerServer


def _server() -> tuple[WorkerServer, threading.Event]:
    drained = threading.Event()
    worker = SimpleNamespace(drain=lambda grace: drained.set(), config=SimpleNamespace(shutdown_grace_sec=0))
    return WorkerServer(uvicorn.Config(app=lambda scope, receive, send: None), worker), drained


def test_a_second_signal_during_the_first_ones_handling_forces_the_exit(monkeypatch):
    srv, drained = _server()
    logged = []

    def log_event(event, **fields):
        logged.append(event)
        if len(logged) == 1:  # the second SIGTERM lands while the first is being logged
            srv.handle_exit(15, None)

    monkeypatch.setattr(server_module, "log_event", log_event)
    srv.handle_exit(15, None)
    assert srv.force_exit and srv.should_exit
    assert logged == ["shutdown_requested"]  # one drain asked for, once
    assert drained.wait(5)


def test_one_signal_drains_and_waits():
    srv, drained = _server()
    srv.handle_exit(15, None)
    assert drained.wait(5)
    assert not srv.force_exit
