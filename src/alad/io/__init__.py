"""Files alad writes and reads: atomic writes and checksums, safetensors headers, run folders, locks."""
