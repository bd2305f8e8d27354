"""Jobs: the request's life as a state machine, its cancel flag, the queue and the registry."""
