"""HTTP: routes, request validation, SSE encoding, correlation ids. No model code runs here."""
