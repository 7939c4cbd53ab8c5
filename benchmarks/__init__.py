"""Runnable comparisons of flopscale kernels against torch baselines."""
