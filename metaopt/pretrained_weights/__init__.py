"""Shipped meta-trained weights (see metaopt.shipped and metaopt.pretrained)."""
