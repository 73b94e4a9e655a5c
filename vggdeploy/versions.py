"""Versions of the libraries that shape a checkpoint or an exported model, recorded in both (torch imported lazily)."""

from __future__ import annotations

import platform

import onnx
import torch

from vggdeploy import __version__


def library_versions() -> dict[str, str]:
    return {"vggdeploy": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def deployment_versions() -> dict[str, str]:
    """Versions of everything that shapes an exported model or its measurements."""
    import onnxruntime
    import onnxsim
    import torch

    return {
        "vggdeploy": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": onnxsim.__version__,
    }
