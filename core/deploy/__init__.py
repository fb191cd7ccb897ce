"""Deployment: predicting new images (predict.py) and handing the model on as TorchScript or ONNX (export.py)."""
