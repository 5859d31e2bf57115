"""ALTO: many LoRA tuning jobs over one frozen backbone, with early exit of hopeless configurations."""
