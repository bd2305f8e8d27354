"""The worker's settings, declared once (the fields of `worker_orcd.config.WorkerConfig`),
and what is derived from them: the `serve` command line (`command_line`) and the record
the engine process is started with (`engine`).

Nothing is imported here: `worker_orcd.config` imports `settings.schema` while it loads.
"""
