"""Developer tools of the repository (not shipped with ddf_ops)."""
