"""The llama.cpp adapter: model, per-job contexts, sampling, text assembly, the inference loop."""
