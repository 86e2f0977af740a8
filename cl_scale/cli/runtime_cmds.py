"""Commands that run instances and clusters."""
