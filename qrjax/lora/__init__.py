"""ALTO: many LoRA tuning jobs over one frozen backbone."""
