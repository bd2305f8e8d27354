"""The chat template and the prompts whose answers and lengths the tests rely on."""

from __future__ import annotations

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
LONG_ANSWER_PROMPT = CHAT.format("Write a long, detailed story about a dragon who learns to bake bread.")
# ~1,400 tokens: evaluating it takes seconds on 2 CPU cores.
LONG_PROMPT = "Hello there, " * 466 + "tell me a story."
SHORT_PROMPT = CHAT.format("What is the capital of France?")
# Answered greedily with "The capital of France is Paris." and EOS.
SHORT_ANSWER = "The capital of France is Paris."
