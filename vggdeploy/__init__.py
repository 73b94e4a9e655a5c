"""vggdeploy: train VGG on Fashion-MNIST, export a self-describing ONNX model, prove the deployment right.

Kept free of heavy imports so ``vggdeploy run`` starts without torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
