"""Framework adapters: capture activations, gradients and logits and hand them to the core."""
