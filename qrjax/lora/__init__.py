"""ALTO in qrjax: many LoRA tuning jobs over one frozen backbone.

config (backbone and tuning presets) -> tasks (byte and Hugging Face tokenizers, synthetic tasks, JSONL, grid) ->
backbone (Hugging Face Llama safetensors <-> params, the checkpoint's tokenizer, the shipped backbone) -> model (Llama layout + grouped multi-LoRA term, multilora)
-> batched (the slot-batched step, adapter-per-device shard_map) -> early_exit (ALTO's rules) -> schedule (memory
model, greedy admission, CP-SAT placement) -> train (the engine: back-fill, evaluation, resume, adapters export).
"""
