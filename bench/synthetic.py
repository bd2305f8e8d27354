"""Synthetic llama models: the shape of a real one, random weights, nothing to download.

    python -m bench.synthetic [--params tiny|1B|8B] [--quant Q4_K_M] [--out DIR | --output FILE]

Benchmarks need a model of a given size and quantization on machines that reach
no model hub. This writes a llama-architecture GGUF with random weights and a
synthetic SentencePiece-style vocabulary (ChatML control tokens, byte fallback,
so any text tokenizes and chat templates work), using only the `gguf` package
and numpy, then quantizes it with the engine's own quantizer
(`llama_model_quantize`), so the result loads and runs exactly like a real model
of that shape and type. Its text is gibberish; its speed is the real model's.

Weights are not drawn one by one: one block of random float16 values (a prime
number of them, so no two rows of a tensor repeat) is made once and every tensor
is that block tiled from its own offset, streamed to disk tensor by tensor, so an
8B model costs its disk writes and the quantizer's time, not 8e9 random draws or
16 GB of memory.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

RMS_EPS = 1e-5
WEIGHT_STD = 0.02  # keeps activations finite through any number of layers

# A prime length: a tensor row starting at offset o + r * row_len repeats only
# after a whole block's worth of rows, never inside one tensor.
BLOCK_LEN = 4_194_301
WRITE_CHUNK = BLOCK_LEN  # elements per write(): large writes, bounded memory


@dataclass(frozen=True)
class Shape:
    """A llama model's hyperparameters (Hugging Face names in comments)."""

    n_embd: int  # hidden_size
    n_layer: int  # num_hidden_layers
    n_ff: int  # intermediate_size
    n_head: int  # num_attention_heads
    n_head_kv: int  # num_key_value_heads
    vocab: int  # vocab_size
    n_ctx_train: int  # max_position_embeddings
    rope_freq_base: float = 10000.0
    tied_embeddings: bool = False  # no output.weight: the logits reuse token_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        for name in ("n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "vocab", "n_ctx_train"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.n_head % self.n_head_kv:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_head_kv {self.n_head_kv}")
        if self.head_dim % 2:
            raise ValueError(f"head size {self.head_dim} must be even (RoPE rotates pairs)")
        if self.vocab < MIN_VOCAB:
            raise ValueError(f"vocab must be at least {MIN_VOCAB} (special and byte tokens), got {self.vocab}")

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) of every tensor, in file order; matrices are (out, in)."""
        e, f, kv = self.n_embd, self.n_ff, self.n_head_kv * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (self.vocab, e))]
        for i in range(self.n_layer):
            b = f"blk.{i}."
            out += [
                (b + "attn_norm.weight", (e,)),
                (b + "attn_q.weight", (e, e)),
                (b + "attn_k.weight", (kv, e)),
                (b + "attn_v.weight", (kv, e)),
                (b + "attn_output.weight", (e, e)),
                (b + "ffn_norm.weight", (e,)),
                (b + "ffn_gate.weight", (f, e)),
                (b + "ffn_up.weight", (f, e)),
                (b + "ffn_down.weight", (e, f)),
            ]
        out.append(("output_norm.weight", (e,)))
        if not self.tied_embeddings:
            out.append(("output.weight", (self.vocab, e)))
        return out

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.tensors())


PRESETS: dict[str, Shape] = {
    # For CI: a few million parameters, every row a multiple of 256 so K-quants apply
    # to every matrix, GQA (2 query heads per KV head) as in the real ones.
    "tiny": Shape(n_embd=256, n_layer=4, n_ff=768, n_head=4, n_head_kv=2, vocab=4096, n_ctx_train=8192),
    # Llama-3.2-1B: tied embeddings, as the real one.
    "1B": Shape(
        n_embd=2048, n_layer=16, n_ff=8192, n_head=32, n_head_kv=8, vocab=128256,
        n_ctx_train=131072, rope_freq_base=500000.0, tied_embeddings=True,
    ),
    # Llama-3.1-8B.
    "8B": Shape(
        n_embd=4096, n_layer=32, n_ff=14336, n_head=32, n_head_kv=8, vocab=128256,
        n_ctx_train=131072, rope_freq_base=500000.0,
    ),
}

SHAPE_FIELDS = ("n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "vocab", "n_ctx_train")


def shape_of(params: str = "tiny", **overrides: Any) -> Shape:
    """The preset `params` with fields replaced by `overrides` (None leaves a field as is)."""
    try:
        base = PRESETS[params]
    except KeyError:
        raise ValueError(f"unknown preset {params!r}; known: {', '.join(PRESETS)}") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(Shape)}
    if unknown:
        raise ValueError(f"unknown shape fields: {', '.join(sorted(unknown))}")
    shape = dataclasses.replace(base, **given)
    shape.validate()
    return shape


# --- quantization types ------------------------------------------------------

QUANT_FTYPES: dict[str, str] = {
    "F32": "LLAMA_FTYPE_ALL_F32",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
}


def quant_name(quant: str) -> str:
    """The canonical spelling of a quantization type (`q4_k_m` → `Q4_K_M`)."""
    name = quant.upper()
    if name not in QUANT_FTYPES:
        raise ValueError(f"unknown quantization {quant!r}; known: {', '.join(QUANT_FTYPES)}")
    return name


def ftype_of(quant: str) -> int:
    """The LLAMA_FTYPE_* constant of a quantization type."""
    import llama_cpp

    return int(getattr(llama_cpp, QUANT_FTYPES[quant_name(quant)]))


# --- vocabulary ----------------------------------------------------------------

SPACE = "\u2581"  # SentencePiece's word-start marker
UNK, BOS, EOS_TEXT, IM_START, IM_END = "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"
SPECIALS = (UNK, BOS, EOS_TEXT, IM_START, IM_END)
UNK_ID, BOS_ID, IM_END_ID = 0, 1, 4
N_BYTE_TOKENS = 256
FIRST_PIECE_ID = len(SPECIALS) + N_BYTE_TOKENS
MIN_VOCAB = FIRST_PIECE_ID + 1

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6  # gguf.TokenType

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Frequent English words: with their prefixes in the vocabulary too, the
# tokenizer's pairwise merges reach them, so ordinary text gives fewer tokens.
COMMON_WORDS = (
    "the of and to in is was that for it with as his on be at by had are but from or have an they"
    " which one you were her all she there would their we him been has when who will more no if out"
    " so said what up its about into than them can only other new some could time these two may then"
    " do first any my now such like our over man me even most made after also did many before must"
    " through back years where much your way well down should because each just those people how too"
    " little state good very make world still own see men work long get here between both life being"
    " under never day same another know while last might us great old year off come since against go"
    " came right used take three story write tell hello there please thank question answer model token"
).split()

# Letters by frequency in English, so the generated n-grams that fill the
# vocabulary start with the likely ones.
LETTERS = "etaoinshrdlcumwfgypbvkjxqz"


def _pieces() -> Iterator[str]:
    """Vocabulary pieces, most useful first; may repeat (the caller drops repeats)."""
    printable = [chr(c) for c in range(0x21, 0x7F)]
    yield SPACE
    yield from printable
    for c in printable:
        yield SPACE + c
    for word in COMMON_WORDS:
        for w in (word, word.capitalize()):
            for end in range(2, len(w) + 1):
                yield SPACE + w[:end]
            for end in range(2, len(w) + 1):
                yield w[:end]
    for n in itertools.count(2):
        for letters in itertools.product(LETTERS, repeat=n):
            s = "".join(letters)
            yield SPACE + s
            yield s


def build_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a `size`-token SentencePiece-style vocabulary.

    Ids: 0 <unk>, 1 <s>, 2 </s>, 3 <|im_start|>, 4 <|im_end|> (control tokens), then
    the 256 byte-fallback tokens <0x00>..<0xFF>, then text pieces. A piece's score
    falls with its id: SentencePiece merges the best-scored pair first.
    """
    if size < MIN_VOCAB:
        raise ValueError(f"vocab must be at least {MIN_VOCAB}, got {size}")
    tokens = list(SPECIALS) + [f"<0x{b:02X}>" for b in range(N_BYTE_TOKENS)]
    scores = [0.0] * len(tokens)
    types = [TOKEN_UNKNOWN] + [TOKEN_CONTROL] * (len(SPECIALS) - 1) + [TOKEN_BYTE] * N_BYTE_TOKENS
    seen = set(tokens)
    for piece in _pieces():
        if len(tokens) == size:
            break
        if piece in seen:
            continue
        seen.add(piece)
        scores.append(-float(len(tokens) - FIRST_PIECE_ID))
        tokens.append(piece)
        types.append(TOKEN_NORMAL)
    return tokens, scores, types


# --- writing -------------------------------------------------------------------


class _TiledTensor:
    """A tensor's data as the random block tiled from an offset, written in chunks.

    Stands in for the numpy array that `GGUFWriter.write_tensor_data` takes (it uses
    only `nbytes` and `tofile`), so a tensor is never whole in memory. Its first
    `zero_elems` elements are zeros.
    """

    def __init__(self, ring: np.ndarray, offset: int, n: int, zero_elems: int = 0) -> None:
        self.ring, self.offset, self.n, self.zero_elems = ring, offset, n, zero_elems
        self.nbytes = n * ring.itemsize

    def tofile(self, fout: BinaryIO) -> None:
        zeros = min(self.zero_elems, self.n)
        if zeros:
            fout.write(np.zeros(zeros, self.ring.dtype).tobytes())
        left, pos = self.n - zeros, self.offset
        while left:
            take = min(WRITE_CHUNK, left)
            # The ring holds the block twice, so any [pos, pos + BLOCK_LEN) is contiguous.
            fout.write(memoryview(self.ring[pos : pos + take]))
            left -= take
            pos = (pos + take) % BLOCK_LEN


def model_name(params: str, quant: str, shape: Shape, seed: int = 0) -> str:
    """`synthetic-llama-1B-Q4_K_M`; a changed shape or seed is part of the name, so a
    file of that name is always that model."""
    label = params
    base = PRESETS.get(params)
    if base is not None and shape != base:
        diff = [
            f"{f.name}{getattr(shape, f.name)}"
            for f in dataclasses.fields(Shape)
            if getattr(shape, f.name) != getattr(base, f.name)
        ]
        label += "-" + "-".join(diff)
    if seed:
        label += f"-s{seed}"
    return f"synthetic-llama-{label}-{quant_name(quant)}"


def write_f16(path: Path, shape: Shape, *, name: str, seed: int = 0) -> int:
    """Write the model as F16 GGUF (norms in F32) at `path`; returns its parameter count."""
    import gguf

    shape.validate()
    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(BLOCK_LEN, dtype=np.float32) * WEIGHT_STD).astype(np.float16)
    ring = np.concatenate([block, block])
    del block

    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_type("model")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_vocab_size(shape.vocab)
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(shape.rope_freq_base)
    w.add_layer_norm_rms_eps(RMS_EPS)

    tokens, scores, types = build_vocab(shape.vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(IM_END_ID)  # a chat turn ends the answer
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    # Text is tokenized as written: no space before the first word or after a
    # control token, as ChatML prompts expect.
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # The rows of the output matrix that give non-text tokens (control, unknown, byte)
    # their logits are zeros: a random model would otherwise end or break its text at
    # random, and greedy decoding never picks a zero logit over the random ones.
    special_rows = FIRST_PIECE_ID
    output_name = "token_embd.weight" if shape.tied_embeddings else "output.weight"

    specs = shape.tensors()
    data: list[Any] = []
    n_params = 0
    for name_, dims in specs:
        n = int(np.prod(dims))
        n_params += n
        if len(dims) == 1:
            arr = np.ones(dims, np.float32)
            w.add_tensor_info(name_, dims, arr.dtype, arr.nbytes)
            data.append(arr)
        else:
            zero = special_rows * dims[1] if name_ == output_name else 0
            t = _TiledTensor(ring, int(rng.integers(0, BLOCK_LEN)), n, zero)
            w.add_tensor_info(name_, dims, np.dtype(np.float16), t.nbytes)
            data.append(t)

    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in data:
            w.write_tensor_data(t)  # type: ignore[arg-type]
    finally:
        w.close()
    return n_params


# --- quantizing ------------------------------------------------------------------

_GGML_LOG_ERROR = 3


class _QuantizerLog:
    """llama.cpp logs a line per tensor while quantizing: show errors only, unless
    verbose. The process's own log callback is put back afterwards."""

    def __init__(self, verbose: bool) -> None:
        import llama_cpp

        def log(level: int, text: bytes, _user: Any) -> None:
            if verbose or level == _GGML_LOG_ERROR:
                sys.stderr.write(text.decode("utf-8", "replace"))

        self._ll = llama_cpp
        self._callback = llama_cpp.llama_log_callback(log)  # alive while llama.cpp holds it
        self._saved = llama_cpp.llama_log_callback()
        self._saved_user = ctypes.c_void_p()

    def __enter__(self) -> None:
        self._ll.llama_log_get(ctypes.byref(self._saved), ctypes.byref(self._saved_user))
        self._ll.llama_log_set(self._callback, ctypes.c_void_p(0))

    def __exit__(self, *exc: Any) -> None:
        self._ll.llama_log_set(self._saved, self._saved_user)


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None, name: str | None = None,
             verbose: bool = False) -> None:
    """Quantize the GGUF `src` into `dst` with llama.cpp's own quantizer; `name`
    replaces general.name in the result."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads or _all_cores()
    params.ftype = ftype_of(quant)
    overrides = None
    if name is not None:
        # An array ended by an empty key, as llama.cpp reads it.
        overrides = (llama_cpp.llama_model_kv_override * 2)()
        overrides[0].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        overrides[0].key = b"general.name"
        overrides[0].value.val_str = name.encode()[:127]
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    with _QuantizerLog(verbose):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {src} -> {dst} as {quant}")


def _all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the whole -------------------------------------------------------------------


def make_model(
    out_dir: Path,
    params: str = "tiny",
    quant: str = "Q4_K_M",
    *,
    seed: int = 0,
    reuse: bool = True,
    keep_f16: bool = False,
    threads: int | None = None,
    filename: str | None = None,
    verbose: bool = False,
    quantizer_log: bool = False,
    **shape_overrides: Any,
) -> Path:
    """Make (or reuse) the synthetic model and return the quantized file's path.

    `shape_overrides`: any Shape field (n_embd, n_layer, n_ff, n_head, n_head_kv,
    vocab, n_ctx_train, rope_freq_base, tied_embeddings). `filename`: the file's name
    in `out_dir` (default: the model's name + `.gguf`). `reuse`: a file already there
    under that name is returned as is (files appear under their name only once
    complete). `keep_f16`: keep the unquantized intermediate next to it.
    `verbose`: progress lines on stderr; `quantizer_log`: llama.cpp's log of the
    quantizer too (a line per tensor; errors are always shown).
    """
    quant = quant_name(quant)
    shape = shape_of(params, **shape_overrides)
    name = model_name(params, quant, shape, seed)
    out_dir = Path(out_dir)
    out = out_dir / (filename or f"{name}.gguf")
    if reuse and out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    # Per-process names: two makers of the same model never write into one file.
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    f16 = out_dir / f"{model_name(params, 'F16', shape, seed)}.gguf"
    f16_partial = partial if quant == "F16" else f16.with_name(f"{f16.name}.partial-{os.getpid()}")
    try:
        t0 = time.perf_counter()
        n_params = write_f16(f16_partial, shape, name=name if quant == "F16" else f16.stem, seed=seed)
        t1 = time.perf_counter()
        say(f"wrote F16 ({n_params:,} parameters) in {t1 - t0:.1f}s")
        if quant != "F16":
            quantize(f16_partial, partial, quant, threads=threads, name=name, verbose=quantizer_log)
            say(f"quantized to {quant} in {time.perf_counter() - t1:.1f}s")
            if keep_f16:
                os.replace(f16_partial, f16)
        os.replace(partial, out)
    finally:
        for leftover in (f16_partial, partial):
            leftover.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__.split("\n\n")[1])
    p.add_argument("--params", default="tiny", choices=list(PRESETS), help="preset shape (default tiny)")
    p.add_argument("--quant", default="Q4_K_M", type=quant_name, help=f"one of {', '.join(QUANT_FTYPES)}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=Path("bench/out/models"),
                       help="directory (default bench/out/models)")
    where.add_argument("--output", type=Path, help="the file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="quantizer threads (default: every core)")
    p.add_argument("--keep-f16", action="store_true", help="keep the unquantized intermediate file")
    p.add_argument("--force", action="store_true", help="rewrite the file even if it exists")
    p.add_argument("--verbose", action="store_true", help="llama.cpp's quantizer log")
    for field in SHAPE_FIELDS:
        p.add_argument("--" + field.replace("_", "-"), type=int, default=None, dest=field)
    args = p.parse_args(argv)

    overrides = {f: getattr(args, f) for f in SHAPE_FIELDS}
    try:
        shape = shape_of(args.params, **overrides)
    except ValueError as exc:
        p.error(str(exc))
    out_dir, filename = (args.output.parent, args.output.name) if args.output else (args.out, None)
    t0 = time.perf_counter()
    path = make_model(
        out_dir, args.params, args.quant, seed=args.seed, reuse=not args.force, keep_f16=args.keep_f16,
        threads=args.threads, filename=filename, verbose=True, quantizer_log=args.verbose, **overrides,
    )
    elapsed = time.perf_counter() - t0
    print(
        f"{path}  params={shape.n_params:,} ({shape.n_params / 1e9:.3f}B)  "
        f"size={path.stat().st_size / 2**20:,.1f} MiB  {elapsed:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
