"""Each setting declared once (WorkerConfig's fields): the `serve` flags, the config they
make and the engine's settings record are all derived from the declarations."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import msgspec
import pytest

from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.config import WorkerConfig
from worker_orcd.serve_ray import settings as serve_ray_settings
from worker_orcd.serve_ray.settings import ServeSettings
from worker_orcd.settings import command_line, engine
from worker_orcd.settings.command_line import config_from, read_serve_flags
from worker_orcd.settings.schema import declared
from worker_orcd.supervisor import engine_process
from worker_orcd.supervisor.engine_process import EngineProcess
from worker_orcd.channel.frames import Channel

MODEL = ("--model", "m.gguf", "--worker-id", "w")


def test_every_field_but_none_is_a_setting_with_a_flag_of_its_own():
    fields = [f.name for f in dataclasses.fields(WorkerConfig)]
    assert [d.name for d in declared(WorkerConfig)] == fields
    flags = [d.flag.name for d in declared(WorkerConfig)]
    assert len(set(flags)) == len(flags)


def test_the_flags_defaults_are_the_configs():
    assert config_from(read_serve_flags(MODEL)) == WorkerConfig(model_path=Path("m.gguf"), worker_id="w")


def test_flags_fill_the_fields_they_are_declared_on(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("carol=tok-c\nadmin root=tok-r\n")
    args = read_serve_flags(
        [*MODEL, "--threads", "3", "--prefill-chunk", "auto", "--gpu-device", "none", "--api-key", "alice=tok-a"]
        + ["--api-keys-file", str(keys), "--allowed-host", "Example.COM", "--stop-budget-ms", "5"]
    )
    config = config_from(args)
    assert (config.n_threads, config.prefill_chunk, config.gpu_device, config.stop_budget_ms) == (3, None, None, 5.0)
    assert config.api_keys == (("alice", "tok-a"), ("carol", "tok-c")) and config.admin_keys == (("root", "tok-r"),)
    assert config.allowed_hosts == ("example.com",) and config.api_keys_file == keys


def test_what_the_flags_leave_open_is_worked_out(monkeypatch):
    config = config_from(read_serve_flags(["--model", "m.gguf", "--port", "9001"]))
    assert config.worker_id.startswith("worker-") and config.worker_id.endswith("-9001")
    monkeypatch.setattr(command_line, "default_model_path", lambda: None)
    with pytest.raises(ValueError, match="no --model given"):
        config_from(read_serve_flags([]))
    with pytest.raises(ValueError, match=r"API key #1 is not of the form TENANT=TOKEN"):
        config_from(read_serve_flags([*MODEL, "--api-key", "bare-token"]))


def test_flags_serve_refuses_are_a_value_error(capsys):
    with pytest.raises(ValueError, match="not valid for worker-orcd serve"):
        read_serve_flags(["--n-ctx", "0"])
    assert "argument --n-ctx: must be at least 1" in capsys.readouterr().err


def test_the_engine_record_holds_the_engine_part_and_what_the_front_works_out(tmp_path):
    engine_names = [d.name for d in declared(WorkerConfig) if d.flag.part in ("engine", "both")]
    assert list(engine.EngineSettings.__struct_fields__) == [*engine_names, "threads", "board_slots"]
    assert "stop_budget_ms" in engine_names and "max_queue" not in engine_names
    config = WorkerConfig(model_path=Path("m.gguf"), n_threads=0)
    record = engine.engine_settings(config, board_slots=4)
    assert record.state_dir == config.state_path and record.threads == config.threads >= 1
    assert (record.n_threads, record.board_slots, record.stop_budget_ms, record.prefill_chunk) == (0, 4, 20.0, None)


def test_the_engine_record_travels_as_one_frame():
    record = engine.engine_settings(WorkerConfig(model_path=Path("/m.gguf"), prefill_chunk=64, gpu_device=None), 2)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    front, engine_end = Channel(a.detach()), Channel(b.detach())
    try:
        front.send_frame(engine.encode(record))
        got = engine.decode(engine_end.recv_frame())
    finally:
        front.close()
        engine_end.close()
    assert got == record and isinstance(got.model_path, Path)
    with pytest.raises(msgspec.ValidationError):
        engine.decode(msgspec.msgpack.encode({"n_ctx": "many"}))


def test_the_engine_is_started_with_its_descriptors_only_and_its_settings_first(monkeypatch, tmp_path):
    seen = {}

    def spawn(cmd, **kwargs):
        seen["cmd"] = cmd
        channel = Channel(os.dup(kwargs["pass_fds"][0]))  # the engine's end, as the engine gets it
        seen["record"] = engine.decode(channel.recv_frame())
        channel.close()
        raise OSError(24, "Too many open files")  # enough seen: no process

    monkeypatch.setattr(engine_process.subprocess, "Popen", spawn)
    config = WorkerConfig(model_path=Path("/m.gguf"), state_dir=tmp_path, n_threads=2)
    with pytest.raises(OSError):
        EngineProcess.start(config, CancelBoard(3))
    flags = [arg for arg in seen["cmd"] if arg.startswith("--")]
    assert flags == ["--channel-fd", "--board-fd", "--log-fd"]
    assert seen["record"] == engine.engine_settings(config, board_slots=3)


def test_ray_serve_settings_read_the_worker_flags_once(monkeypatch):
    calls = []

    def counted(argv):
        calls.append(argv)
        return read_serve_flags(argv)

    monkeypatch.setattr(serve_ray_settings, "read_serve_flags", counted)
    settings = ServeSettings(worker_args=("--max-queue", "3", "--api-key", "alice=tok-a"))
    assert (settings.max_queue, settings.serve_queue_limit, settings.keyed) == (3, 6, True)
    assert settings.graceful_shutdown_timeout_s > 0 and settings.api_keys().tenants == (("alice", "tok-a"),)
    assert len(calls) == 1
