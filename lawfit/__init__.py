"""lawfit: scaling laws, robust fitting with uncertainty, IsoFLOP analysis and
compute-optimal allocation.  Pure numpy/scipy/pandas: never imports torch."""
