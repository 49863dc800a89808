"""Scores and speed: task metrics (seqeval-style F1, SQuAD), latency, interleaved timing."""
