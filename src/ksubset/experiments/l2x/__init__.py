"""Learning to explain (paper E3): rationale data with ground truth, the real-data loader, the L2X tabular sets."""
