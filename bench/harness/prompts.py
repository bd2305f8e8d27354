"""The prompts every scenario uses, the same for the worker and its baselines.

Each request gets a numbered prompt: llama-cpp-python reuses the KV cache of the
longest prefix a prompt shares with the previous one, so repeating one prompt
would let its server skip the evaluation the worker (a fresh context per job)
always does. The number comes first, digits reversed, so consecutive prompts
part right after the chat template's opening tokens; it is zero-padded, so every
prompt has the same token count.
"""

from __future__ import annotations

from testkit.prompts import CHAT

STORY = "{tag}. Write a long, detailed story about a dragon who learns to bake bread."
# About 1,400 tokens with SmolLM2's tokenizer: seconds of prompt evaluation on 2 CPU cores.
LONG_REPEAT = 466


def tag(n: int) -> str:
    """Four digits, least significant first: prompts n and n+1 differ in their first one."""
    return f"{n % 10000:04d}"[::-1]


def story(n: int) -> str:
    """A chat-template prompt whose greedy answer runs for hundreds of tokens."""
    return CHAT.format(STORY.format(tag=tag(n)))


def long_prompt(n: int, repeat: int = LONG_REPEAT) -> str:
    """A long plain prompt, for cancels that land during prompt evaluation."""
    return f"{tag(n)}. " + "Hello there, " * repeat + "tell me a story."
