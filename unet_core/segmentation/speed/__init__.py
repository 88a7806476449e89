"""The fast inference path: BatchNorm folding, fused cuDNN conv + ReLU, split decoder concatenations, compile."""
