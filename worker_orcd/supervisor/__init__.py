"""The front's side of the engine process: starting it, talking to it, watching it."""
