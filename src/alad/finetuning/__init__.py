"""Stage 0 and stage 3: fine-tuning a task model, with knowledge distillation and the auxiliary alignment loss."""
