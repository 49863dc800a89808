"""alad: Alignment Adapters for compressed transformer encoders."""
