"""Slow, obvious NumPy/Python versions of the numba kernels, for comparison in tests."""
