"""UNet Lab core: U-Net models, checkpoints, LoRA, gates and segmentation.

Pure PyTorch; imports no ComfyUI module and nothing of ``nodes``.
"""
