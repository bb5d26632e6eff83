"""The one training loop every training kind shares, and its multi-process launch under torchrun."""
