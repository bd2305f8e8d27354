"""`python -m bench`: how fast a cancel stops and frees the worker, and what streaming costs.

Every scenario runs the worker side by side with baselines on the same model and
settings, in the same run: the bare llama-cpp-python `Llama.generate` loop in this
process and llama-cpp-python's own server over HTTP. The pytest-benchmark suite
in `bench/` drives the same pieces.
"""
