"""Talking to a worker from Python: for now the SSE reader its streams are read with."""
