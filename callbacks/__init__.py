"""Lightning callbacks of hfgi3d (metrics and logging); installed as ``hfgi3d.callbacks``."""
