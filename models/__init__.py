"""The built-in torch models, trainer, evaluation and ONNX scorer export."""
