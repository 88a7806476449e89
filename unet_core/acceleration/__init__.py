"""Whole-step acceleration of the diffusion UNet: CUDA graphs per call signature, optional compile.

``signature`` keys a call, ``weights`` fingerprints where the weights are, ``graphs`` captures and
caches graphs, ``accelerator`` decides per call between replay, capture and eager, and ``install``
puts an accelerator on a MODEL through the patcher's wrapper API (either host).
"""
