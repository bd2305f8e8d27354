"""What the worker says to its clients, each format declared once: the stream's events
(`events`), the error envelopes (`errors`), the job record (`records`) and the job-id
rule (`ids`).

Shared by the worker, the Ray router and the client library, so it imports nothing of
theirs (no HTTP framework, no httpx): only the worker's error codes.
"""
