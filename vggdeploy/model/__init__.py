"""The VGG network: the configurations of the paper's Table 1, the builder, and checkpoints that rebuild it (torch)."""
