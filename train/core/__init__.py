"""What every part of the trainer shares: typed config sections (config), loading the Qwen2.5-Omni thinker with or
without LoRA (modeling), the DPO / AVEm-DPO losses (losses), the per-step metrics log (metrics) and the DeepSpeed
config templates with their filling-in (ds_config, deepspeed/*.json). May import engine.core (and engine.devkit to
build a `tiny:DIR` model on demand); no Ray.
"""
