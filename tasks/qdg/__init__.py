"""Quanta discovery with gradients (paper Section 4, second half)."""
