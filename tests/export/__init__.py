"""Tests of training/export: ONNX graphs, parity and the model_store manifest."""
