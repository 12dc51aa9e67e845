"""PyTorch interop: the reference layouts' key tables, reading PyTorch checkpoints, import into the
JAX models, export back, and a PyTorch copy of the six models for parity checks."""
