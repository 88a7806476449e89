"""LoRA formats, block maps and block weights, patching and baking.

- ``formats``: read a LoRA file and group its keys by module (kohya, diffusers/PEFT, LyCORIS…)
- ``keys``: key suffixes, prefix resolution onto LDM module names, family hints
- ``deltas``: delta W of each format and the patch objects (ComfyUI's adapter protocol)
- ``blocks``: block ids (IN00…, M00, OUT00…, BASE), presets and block-spec parsing
- ``plan``: check a LoRA against a model and group its patches per block, with a report
"""
