"""What the tests and the benchmark share for driving a real worker from outside.

Not part of the installed package (worker_orcd): a source checkout's, importable
from the checkout's root, where `pytest` and `python -m bench` run.

- waiting:   wait_until, the one poll-with-a-deadline (no sleeps as synchronisation)
- processes: free ports, server child processes that die with their parent
- rss:       resident memory of a process and everything it started
- worker:    the real worker as a child process, its JSON log read on a thread
- wire:      a stream's events as the wire carried them (httpx-sse, not the package's reader)
- prompts:   the chat template and the prompts whose length the tests rely on
- streams:   streams read on a thread, cancels, job polling, stream shape checks
- jobs:      jobs with recording sinks and ready-made outcomes, no model
"""
