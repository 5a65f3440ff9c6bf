"""Functions used only by the benchmarks."""
