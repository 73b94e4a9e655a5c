"""The labelled images a model learns from (torch): Fashion-MNIST's IDX files, folders of the user's own images,
the calibration holdout, and batches on the training device."""
