"""The inference server: local models (transformers/torch) behind the inference contract."""
