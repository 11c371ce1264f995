"""The model store: manifest schema, entry listing and verification, and ONNX Runtime sessions for an
entry's graphs. Shared by the service (serving), training/export (writing) and training/evaluate (scoring);
imports no torch."""
