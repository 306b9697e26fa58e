"""Plumbing the node and the origin share: settings, secrets, logs, TLS, live reload,
request bodies, background tasks, worker processes, the HTTP runner."""
