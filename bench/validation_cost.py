"""What validating a request costs, from its JSON body to the job's `Sampling` (µs per request).

    python -m bench.validation_cost [--number 20000]

No worker, no model: the `/execute` body and the `/v1/completions` body are
parsed, validated and made into the engine's settings as the routes do, in
this process; the best of five repeats is the figure.
"""

from __future__ import annotations

import argparse
import json
import timeit

from worker_orcd.http.openai.params import parse_completion
from worker_orcd.http.validation import parse_execute, parse_json_object

EXECUTE = json.dumps(
    {"job_id": "bench-1", "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0.7, "top_p": 0.9,
     "top_k": 40, "repetition_penalty": 1.1, "stop": ["\n\n"], "seed": 42}
).encode()  # fmt: skip
COMPLETION = json.dumps(
    {"model": "m.gguf", "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0.7, "top_p": 0.9,
     "stop": "\n\n", "seed": 42, "stream": True, "stream_options": {"include_usage": True}, "user": "u-1"}
).encode()  # fmt: skip


def execute_to_sampling() -> object:
    return parse_execute(parse_json_object(EXECUTE)).sampling(64)


def completion_to_sampling() -> object:
    return parse_completion(parse_json_object(COMPLETION)).sampling(64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    for name, fn in (("/execute", execute_to_sampling), ("/v1/completions", completion_to_sampling)):
        best = min(timeit.repeat(fn, number=args.number, repeat=5)) / args.number
        print(f"{name:16} {best * 1e6:7.2f} µs per request")


if __name__ == "__main__":
    main()
