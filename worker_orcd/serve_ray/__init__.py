"""worker-orcd on Ray Serve: many workers behind one address, with cancels that find their job.

Install with the `ray` extra (`pip install "worker-orcd[ray]"`). The pieces:

- `app`: the Serve application (a Router ingress in front of the Worker replicas);
- `replica`: a Worker replica, one real worker-orcd worker as its child process;
- `router`: the HTTP ingress: executes through Serve, job-by-id requests to the
  owner's worker, fan-outs and merges;
- `directory`: the job directory actor (which replica holds which job);
- `routing`: the Worker deployment's request router, which tells leaving replicas to drain;
- `slots`: the replicas' state dirs on a node, and the ledgers dead replicas leave;
- `python -m worker_orcd.serve_ray`: the local command.

Only `app`, `replica`, `router`, `routing`, `cluster` and the command import Ray.
"""
