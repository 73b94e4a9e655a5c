"""Proving a deployment right: ``check`` (torch vs ONNX Runtime on the test set) and ``bench`` (latency measured the
same way on both), with the kernel profiles and speed ablations behind them."""
