"""hfgi3d's presets (YAML). This folder ships inside the package as ``hfgi3d.configs``; find a file
with :func:`hfgi3d.presets.preset_path`."""
