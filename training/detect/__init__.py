"""Detector: Yolo-FastestV2 in PyTorch, model_store detector entries (ONNX), mAP metrics, ``dir-models``."""
