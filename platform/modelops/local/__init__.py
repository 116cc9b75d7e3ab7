"""Local mode: everything on one machine, no cluster."""
