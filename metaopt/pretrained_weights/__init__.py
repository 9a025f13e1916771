"""Shipped meta-trained weights (see metaopt.pretrained)."""
