"""Custom CUDA kernels (.cu sources) and their CPU twins."""
