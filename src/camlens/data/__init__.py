"""Datasets: image folders with classes, named torchvision datasets, the digits-canvas benchmark."""
