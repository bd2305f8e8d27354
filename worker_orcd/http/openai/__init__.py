"""The OpenAI-compatible API (its section of the contract): chat and text completions, the model list."""

from worker_orcd.http.openai.routes import OPENAI_ROUTES

__all__ = ["OPENAI_ROUTES"]
