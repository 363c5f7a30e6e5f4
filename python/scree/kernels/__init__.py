"""scree.kernels: `reference` (the readable spec every kernel is tested against) and the
dispatch modules that pick the compiled C++ kernel or the reference for a given input."""
