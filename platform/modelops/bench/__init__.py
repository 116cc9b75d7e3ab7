"""Load generation and baseline servers for side-by-side benchmarks."""
