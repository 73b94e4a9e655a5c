"""The ``vggdeploy export`` stage: checkpoint -> ONNX -> simplified, checked, calibrated, self-describing model,
with its variants, golden vectors and Triton repository."""
