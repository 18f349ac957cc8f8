"""Training classifiers: CAM-ready ones (a backbone, global average pooling, one linear layer) or any other (a ViT)."""
