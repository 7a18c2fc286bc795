"""csd_nerfstudio: CSD-Edit as a nerfstudio method (``ns-train csd-edit``)."""
