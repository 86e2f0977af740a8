"""Integrations of cl-scale's worker path with agent frameworks (each behind its own pip extra)."""
