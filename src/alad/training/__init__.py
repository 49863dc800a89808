"""Training machinery shared by alignment and fine-tuning: the resumable loop and several processes."""
