"""bench.synthetic: the shapes of its presets, its vocabulary, and the tiny model as written."""

from __future__ import annotations

import gguf
import llama_cpp
import numpy as np
import pytest

from bench import synthetic
from bench.synthetic import PRESETS, build_vocab, make_model, shape_of

# The published parameter counts of the models the presets copy.
LLAMA_32_1B_PARAMS = 1_235_814_400
LLAMA_31_8B_PARAMS = 8_030_261_248


def test_presets_have_the_real_models_shapes_and_counts():
    one, eight = shape_of("1B"), shape_of("8B")
    assert (one.n_embd, one.n_layer, one.n_ff, one.n_head, one.n_head_kv, one.vocab) == (
        2048, 16, 8192, 32, 8, 128256,
    )
    assert one.tied_embeddings and "output.weight" not in dict(one.tensors())
    assert one.n_params == LLAMA_32_1B_PARAMS
    assert (eight.n_embd, eight.n_layer, eight.n_ff, eight.n_head, eight.n_head_kv, eight.vocab) == (
        4096, 32, 14336, 32, 8, 128256,
    )
    assert not eight.tied_embeddings and dict(eight.tensors())["output.weight"] == (128256, 4096)
    assert eight.n_params == LLAMA_31_8B_PARAMS
    assert one.n_ctx_train == eight.n_ctx_train == 131072


def test_tiny_is_small_and_every_matrix_takes_k_quants():
    tiny = shape_of("tiny")
    assert 1_000_000 < tiny.n_params < 10_000_000
    assert tiny.n_ctx_train == 8192
    assert 2 <= tiny.n_layer <= 4 and 2048 <= tiny.vocab <= 4096
    for name, dims in tiny.tensors():
        if len(dims) == 2:
            assert dims[1] % 256 == 0, name  # K-quant super-blocks span 256 values of a row


def test_tensor_shapes():
    s = shape_of("tiny", n_layer=2)
    tensors = dict(s.tensors())
    kv = s.n_head_kv * s.head_dim
    assert tensors["token_embd.weight"] == (s.vocab, s.n_embd)
    assert tensors["blk.1.attn_k.weight"] == (kv, s.n_embd)
    assert tensors["blk.1.ffn_down.weight"] == (s.n_embd, s.n_ff)
    assert tensors["blk.1.ffn_gate.weight"] == (s.n_ff, s.n_embd)
    assert "blk.2.attn_q.weight" not in tensors
    assert len(tensors) == 2 + 9 * s.n_layer + (0 if s.tied_embeddings else 1)


def test_overrides_and_their_checks():
    s = shape_of("8B", n_layer=2, vocab=32000, n_ctx_train=None)
    assert (s.n_layer, s.vocab, s.n_embd, s.n_ctx_train) == (2, 32000, 4096, 131072)
    with pytest.raises(ValueError, match="n_head"):
        shape_of("tiny", n_head=3)
    with pytest.raises(ValueError, match="n_head_kv"):
        shape_of("tiny", n_head_kv=3)
    with pytest.raises(ValueError, match="vocab"):
        shape_of("tiny", vocab=100)
    with pytest.raises(ValueError, match="unknown preset"):
        shape_of("70B")
    with pytest.raises(ValueError, match="unknown shape fields"):
        shape_of("tiny", n_embed=512)


def test_quant_names_map_to_llama_cpp_ftypes():
    for name, ftype in {
        "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
        "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
        "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    }.items():
        assert synthetic.ftype_of(name) == ftype
        assert synthetic.ftype_of(name.lower()) == ftype
    with pytest.raises(ValueError, match="unknown quantization"):
        synthetic.ftype_of("Q9_9")


def test_model_names_say_what_the_file_holds():
    assert synthetic.model_name("1B", "q4_k_m", shape_of("1B")) == "synthetic-llama-1B-Q4_K_M"
    other = synthetic.model_name("tiny", "Q8_0", shape_of("tiny", n_layer=2), seed=7)
    assert other == "synthetic-llama-tiny-n_layer2-s7-Q8_0"
    tied = synthetic.model_name("tiny", "Q8_0", shape_of("tiny", tied_embeddings=True))
    assert tied == "synthetic-llama-tiny-tied_embeddingsTrue-Q8_0"


@pytest.mark.parametrize("size", [synthetic.MIN_VOCAB, 4096, 128256])
def test_vocabulary(size):
    tokens, scores, types = build_vocab(size)
    assert len(tokens) == len(scores) == len(types) == size
    assert len(set(tokens)) == size
    assert tokens[:5] == ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    assert types[:5] == [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 4
    assert tokens[5:261] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[5:261]) == {gguf.TokenType.BYTE}
    assert set(types[261:]) == {gguf.TokenType.NORMAL}
    assert all(a > b for a, b in zip(scores[261:], scores[262:]))  # earlier pieces merge first


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_tiny_model_written_and_read_back(tmp_path):
    path = make_model(tmp_path, "tiny", "Q4_K_M")
    shape = PRESETS["tiny"]
    assert path == tmp_path / "synthetic-llama-tiny-Q4_K_M.gguf"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the F16 intermediate is gone

    r = gguf.GGUFReader(path)
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "general.name") == "synthetic-llama-tiny-Q4_K_M"
    assert _field(r, "general.file_type") == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert _field(r, "llama.context_length") == 8192
    assert _field(r, "llama.embedding_length") == shape.n_embd
    assert _field(r, "llama.block_count") == shape.n_layer
    assert _field(r, "llama.feed_forward_length") == shape.n_ff
    assert _field(r, "llama.attention.head_count") == shape.n_head
    assert _field(r, "llama.attention.head_count_kv") == shape.n_head_kv
    assert _field(r, "llama.rope.dimension_count") == shape.head_dim
    assert _field(r, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert _field(r, "llama.vocab_size") == shape.vocab
    assert _field(r, "tokenizer.ggml.model") == "llama"
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == shape.vocab and tokens[4] == "<|im_end|>"
    assert _field(r, "tokenizer.ggml.bos_token_id") == 1
    assert _field(r, "tokenizer.ggml.eos_token_id") == 4
    assert _field(r, "tokenizer.ggml.unknown_token_id") == 0
    assert "<|im_start|>" in _field(r, "tokenizer.chat_template")

    tensors = {t.name: t for t in r.tensors}
    assert set(tensors) == {name for name, _ in shape.tensors()}
    assert sum(int(t.n_elements) for t in r.tensors) == shape.n_params
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_K
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

    # Reused, not rewritten.
    mtime = path.stat().st_mtime_ns
    assert make_model(tmp_path, "tiny", "Q4_K_M") == path
    assert path.stat().st_mtime_ns == mtime


def test_f16_weights(tmp_path):
    path = make_model(tmp_path, "tiny", "F16", n_layer=2)
    r = gguf.GGUFReader(path)
    assert _field(r, "general.file_type") == llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    tensors = {t.name: t for t in r.tensors}
    norm = np.asarray(tensors["blk.0.ffn_norm.weight"].data)
    assert norm.dtype == np.float32 and (norm == 1.0).all()
    q = np.asarray(tensors["blk.0.attn_q.weight"].data).astype(np.float32)
    assert np.isfinite(q).all() and 0.015 < q.std() < 0.025
    # Different tensors start at different places of the random block.
    k = np.asarray(tensors["blk.0.attn_k.weight"].data)
    assert not np.array_equal(k[:4], np.asarray(tensors["blk.1.attn_k.weight"].data)[:4])
    # Rows of non-text tokens give zero logits; text pieces' rows are random.
    out = np.asarray(tensors["output.weight"].data)
    assert out.shape == (4096, 256)
    assert not out[: synthetic.FIRST_PIECE_ID].any()
    assert (np.abs(out[synthetic.FIRST_PIECE_ID :]).sum(axis=1) > 0).all()
    # No two rows of a matrix are the same.
    assert len({row.tobytes() for row in out[synthetic.FIRST_PIECE_ID :]}) == 4096 - synthetic.FIRST_PIECE_ID


def test_the_same_seed_gives_the_same_file(tmp_path):
    a = make_model(tmp_path / "a", "tiny", "Q8_0", seed=3)
    b = make_model(tmp_path / "b", "tiny", "Q8_0", seed=3)
    c = make_model(tmp_path / "c", "tiny", "Q8_0", seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert np.asarray(gguf.GGUFReader(a).tensors[-1].data).tobytes() != np.asarray(
        gguf.GGUFReader(c).tensors[-1].data
    ).tobytes()


def test_command_line(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    argv = ["--output", str(out), "--quant", "q8_0", "--n-layer", "2", "--keep-f16", "--threads", "1"]
    assert synthetic.main(argv) == 0
    assert out.is_file()
    assert (tmp_path / "synthetic-llama-tiny-n_layer2-F16.gguf").is_file()
    printed = capsys.readouterr().out
    assert str(out) in printed and f"params={shape_of('tiny', n_layer=2).n_params:,}" in printed
    assert _field(gguf.GGUFReader(out), "general.name") == "synthetic-llama-tiny-n_layer2-Q8_0"
    with pytest.raises(SystemExit):
        synthetic.main(["--params", "tiny", "--n-head", "3", "--out", str(tmp_path)])


def test_llama_cpp_tokenizes_any_text_and_parses_chatml(tmp_path):
    path = make_model(tmp_path, "tiny", "Q8_0")
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    text = (
        "Hello, world! The quick brown fox \u2014 na\u00efve caf\u00e9, "
        "\u65e5\u672c\u8a9e \U0001f642.\n\tTabs   and  spaces."
    )
    tokens = vocab.tokenize(text.encode(), add_bos=False, special=False)
    assert 0 < len(tokens) < len(text)
    assert vocab.detokenize(tokens).decode() == text  # byte fallback covers what pieces do not
    chat = "<|im_start|>user\nHi<|im_end|>\n"
    tokens = vocab.tokenize(chat.encode(), add_bos=True, special=True)
    assert tokens[:2] == [1, 3] and 4 in tokens  # <s>, <|im_start|>, ..., <|im_end|>
    assert vocab.token_eos() == 4


def test_a_failed_make_leaves_no_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("quantizer failed")

    monkeypatch.setattr(synthetic, "quantize", fail)
    with pytest.raises(RuntimeError, match="quantizer failed"):
        make_model(tmp_path, "tiny", "Q4_K_M", keep_f16=True)
    assert list(tmp_path.iterdir()) == []


def test_reuse_false_rewrites(tmp_path):
    path = make_model(tmp_path, "tiny", "F16", n_layer=2)
    path.write_bytes(b"not a model")
    assert make_model(tmp_path, "tiny", "F16", n_layer=2) == path and path.read_bytes() == b"not a model"
    make_model(tmp_path, "tiny", "F16", n_layer=2, reuse=False)
    assert path.read_bytes()[:4] == b"GGUF"
