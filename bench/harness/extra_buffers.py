"""The baselines run with the worker's extra-CPU-buffers setting, so every side runs the same kernels.

The worker decides it (engine.cpu_features: flag, cached verdict or probe) and
reports it on /health; the bench reads it there and loads the bare loop's and
the peer's model the same way. llama-cpp-python's `Llama` takes no argument
for it in every version, so where it does not, the setting goes into the
model params as llama-cpp-python makes them.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

# What llama.cpp does when nobody says otherwise.
ENGINE_DEFAULT = {"mode": None, "enabled": True, "source": "engine default", "reason": None}
_ENGINE_FUNCTION = "engine_function"


def of_worker(health: dict[str, Any]) -> dict[str, Any]:
    """The worker's setting from its /health; a worker that does not report it runs the engine default."""
    value = health.get("cpu_extra_buffers")
    if isinstance(value, dict) and isinstance(value.get("enabled"), bool):
        return value
    return dict(ENGINE_DEFAULT)


def describe(setting: dict[str, Any] | None) -> str:
    """`on (auto, probe)`, `off (off, flag)`: for report headers."""
    if not setting:
        return "not known"
    state = "on" if setting.get("enabled") else "off"
    how = ", ".join(str(v) for v in (setting.get("mode"), setting.get("source")) if v)
    return f"{state} ({how})" if how else state


def set_default(enabled: bool) -> None:
    """From now on, every model llama-cpp-python loads in this process has `use_extra_bufts = enabled`."""
    import llama_cpp.llama_cpp as lib

    # Wrap the engine's own function, never an earlier wrapper of ours. (Not `__wrapped__`:
    # llama-cpp-python's ctypes binding already uses it for its Python stub.)
    made = getattr(lib.llama_model_default_params, _ENGINE_FUNCTION, lib.llama_model_default_params)

    def model_default_params() -> Any:
        params = made()
        params.use_extra_bufts = enabled
        return params

    setattr(model_default_params, _ENGINE_FUNCTION, made)
    lib.llama_model_default_params = model_default_params


@contextmanager
def model_params(enabled: bool) -> Iterator[None]:
    """`set_default` for the duration of a `with` block."""
    import llama_cpp.llama_cpp as lib

    before = lib.llama_model_default_params
    set_default(enabled)
    try:
        yield
    finally:
        lib.llama_model_default_params = before


def llama(enabled: bool, **kwargs: Any) -> Any:
    """`llama_cpp.Llama(**kwargs)` whose model loads with `use_extra_bufts = enabled`."""
    from llama_cpp import Llama

    # Llama swallows unknown keywords silently: ask its signature, not the call.
    if "use_extra_bufts" in inspect.signature(Llama.__init__).parameters:
        return Llama(use_extra_bufts=enabled, **kwargs)
    with model_params(enabled):
        return Llama(**kwargs)
