"""The SD-family diffusion UNet in LDM key layout, its configs and patch points."""
