"""The benchmark, soak and floors of worker-orcd: a source checkout's tool, not part of the wheel.

    python -m bench ...          the report: every scenario against its baselines (bench.harness)
    python -m bench.soak ...     many jobs from concurrent clients, every stream checked
    python -m bench.floors ...   what no design on top of this engine and HTTP stack can beat
    python -m bench.pool ...     the paired samples of several reports, pooled
    pytest bench/ --benchmark-only

Run from the checkout's root after `pip install -e ".[bench,peer]"`.
"""
