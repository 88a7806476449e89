"""LoRA formats, block maps and block weights, patching and baking."""
