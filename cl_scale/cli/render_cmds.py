"""Commands that render deployments (owned by the render work)."""
