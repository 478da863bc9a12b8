"""Model roles, backends and their registry."""
