"""Encoders (packaged, local, hub; fingerprints) and the task model (encoder + adapter + head)."""
