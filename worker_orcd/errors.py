"""The worker's stable error codes.

Codes are the contract: clients branch on them, so they never change meaning.
HTTP statuses for the codes live with the error envelopes (`worker_orcd.api.errors`).
"""

from enum import Enum


class ErrorCode(str, Enum):
    # Rejected before anything runs (plain HTTP errors).
    INVALID_REQUEST = "INVALID_REQUEST"
    JOB_EXISTS = "JOB_EXISTS"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    WORKER_BUSY = "WORKER_BUSY"
    WORKER_SHUTTING_DOWN = "WORKER_SHUTTING_DOWN"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    HOST_NOT_ALLOWED = "HOST_NOT_ALLOWED"
    ORIGIN_NOT_ALLOWED = "ORIGIN_NOT_ALLOWED"
    TENANT_BUSY = "TENANT_BUSY"
    ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"  # the engine process keeps dying: not ready
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"  # a request not sent whole within --read-timeout-sec
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    # A job's terminal `error` event.
    CANCELLED = "CANCELLED"
    INFERENCE_TIMEOUT = "INFERENCE_TIMEOUT"
    WORKER_SHUTDOWN = "WORKER_SHUTDOWN"
    WORKER_RESTARTED = "WORKER_RESTARTED"
    ENGINE_FAILED = "ENGINE_FAILED"  # the engine process died during the job
    VRAM_OOM = "VRAM_OOM"
    CUDA_ERROR = "CUDA_ERROR"
    INTERNAL = "INTERNAL"
    # The Ray router's own, for a replica it could not reach or that died (WO-RAY-9, WO-RAY-12).
    REPLICA_FAILED = "REPLICA_FAILED"
    REPLICA_UNAVAILABLE = "REPLICA_UNAVAILABLE"


_ALL = tuple(ErrorCode)
# What a plain HTTP error answer carries (the codes above CANCELLED, and INTERNAL), and what a
# job ends with in its record and its `error` event (from CANCELLED on, and ENGINE_UNAVAILABLE).
REQUEST_CODES: tuple[ErrorCode, ...] = (*_ALL[: _ALL.index(ErrorCode.CANCELLED)], ErrorCode.INTERNAL)
JOB_CODES: tuple[ErrorCode, ...] = (
    *_ALL[_ALL.index(ErrorCode.CANCELLED) : _ALL.index(ErrorCode.REPLICA_FAILED)],
    ErrorCode.ENGINE_UNAVAILABLE,
)
