"""Losses, one module per mechanism: classification, RCM, MAM, segmentation CE, the single-stage model's, AA, LR."""
