"""The backend contract's Python side, shared by every kind of backend (the inference
server, the provider adapters): its types (types.py) and its gRPC face (contract.py)."""
