"""Foedus federation: ops-model training (torch), ONNX export and Flower apps."""
