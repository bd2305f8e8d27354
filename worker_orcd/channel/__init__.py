"""What the front and the engine process share: the messages, their frames, the cancel
board and the native cancel word. A leaf: it imports nothing else of the worker's."""
