"""Runnable comparisons of flopscale kernels against torch baselines."""
from flopscale._namespace import require_namespaced as _require_namespaced

_require_namespaced(__name__, 'benchmarks')
