"""Figures of a model's answers, in numpy: parity between two engines, calibration (ECE, temperature fit) and the
per-class report. Export and verify both measure with them."""
