"""worker-orcd: a GGUF inference worker that streams tokens over SSE and cancels promptly."""

__version__ = "0.1.0"
