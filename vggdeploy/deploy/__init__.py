"""The torch-free deployment wing: the exported model's contract, preprocessing, ONNX Runtime sessions and
classification. This is what ``pip install vggdeploy`` runs; import-linter keeps torch and the training side out."""
