"""The loaded GGUF model: weights, vocabulary and what `/health` says about them.

The model is loaded once and stays resident; contexts (KV cache, compute
buffers) are made from it per job by `engine.contexts`.
"""

from __future__ import annotations

import ctypes
import math
import threading
from pathlib import Path

import llama_cpp

from worker_orcd.channel.messages import ModelInfo
from worker_orcd.engine import devices, llama_log
from worker_orcd.engine.gguf import ModelLoadError, check_model_file

_backend_lock = threading.Lock()
_backend_ready = False


def init_backend() -> None:
    """Initialise llama.cpp once per process, its log lines going to the JSON log."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        llama_cpp.llama_backend_init()
        llama_log.install()
        _backend_ready = True


class Model:
    def __init__(self, path: Path, *, gpu_device: int | None = 0, extra_buffers: bool = True) -> None:
        """`gpu_device`: which of this build's GPUs gets every layer (None: the CPU, also
        on a GPU build); a CPU build runs on the CPU whatever it says. `extra_buffers`:
        whether the CPU backend may repack weights into its extra buffer types (AMX,
        CPU_REPACK); engine.cpu_features decides it for the worker."""
        path = Path(path)
        check_model_file(path)
        init_backend()
        try:
            self.device = devices.pick(gpu_device)
        except devices.NoSuchDevice as exc:
            raise ModelLoadError(str(exc)) from exc
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = extra_buffers
        self.extra_buffers = extra_buffers
        # Exactly the chosen device, or none: llama.cpp otherwise takes every GPU it sees.
        self._devices = devices.device_list(self.device)
        params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        if self.device is not None:
            params.n_gpu_layers = -1  # every layer in VRAM
            params.main_gpu = 0  # the first (only) entry of `devices`
            params.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
        else:
            params.n_gpu_layers = 0
        errors = llama_log.error_count()
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            reason = llama_log.errors_during(errors)
            raise ModelLoadError(f"llama.cpp could not load the model: {path}" + (f" ({reason})" if reason else ""))
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        is_eog = llama_cpp.llama_vocab_is_eog
        self.eog_tokens = frozenset(t for t in range(self.n_vocab) if is_eog(self.vocab, t))
        self._eog_list = sorted(self.eog_tokens)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self.info = ModelInfo(
            name=path.name,
            path=str(path),
            size_bytes=path.stat().st_size,
            quant_kind=self._quant_kind(),
            tokenizer_kind=self._meta("tokenizer.ggml.model") or "unknown",
            vocab_size=self.n_vocab,
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(self.ptr),
            backend=self.device.backend if self.device is not None else "cpu",
            gpu_layers=llama_cpp.llama_model_n_layer(self.ptr) if self.device is not None else 0,
            chat_template=self._meta("tokenizer.chat_template"),
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self.vocab)),
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self.vocab)),
            bos_id=self._token_id(llama_cpp.llama_vocab_bos(self.vocab)),
        )

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text (`<|im_start|>`) are parsed.

        Safe beside a running decode: it reads only the vocabulary.
        """
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, True)
        if n < 0:  # cannot happen with one slot per byte, but never trust a length
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, True)
        return list(tokens[:n])

    def ban_eog(self, ctx: int, index: int = -1) -> None:
        """Make the next token sampled from output `index` of `ctx` no end of generation
        (`min_tokens`): its logits are -inf before the sampler chain reads them."""
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        for token in self._eog_list:
            logits[token] = -math.inf

    def piece(self, token: int) -> bytes:
        """The bytes of one token (maybe part of a UTF-8 character); cached per token."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = self._piece_buf
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def _token_id(self, token: int) -> int | None:
        return token if 0 <= token < self.n_vocab else None  # LLAMA_TOKEN_NULL is -1

    def _token_text(self, token: int) -> str:
        if self._token_id(token) is None:
            return ""
        return (llama_cpp.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n >= len(buf):  # the value's length, without the terminator: read it whole
            buf = ctypes.create_string_buffer(n + 1)
            n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _quant_kind(self) -> str:
        # llama_model_desc reads "<arch> <size> <ftype>", e.g. "llama 135M Q4_1".
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.ptr, buf, len(buf))
        words = buf.value.decode("utf-8", "replace").split()
        return words[-1] if words else "unknown"
