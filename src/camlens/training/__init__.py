"""Training CAM-ready classifiers (a backbone, global average pooling, one linear layer)."""
