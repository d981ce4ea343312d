"""The SABER trainer: SED supervised fine-tuning, preference building and CA-DPO / AVEm-DPO on Ray Train + DeepSpeed,
MoSEAR, and the evaluation harness. Packages: `core` (configs, model loading, losses, run metrics, DeepSpeed
configs), `data` (Ray Data reading and encoding of SED and preference records, collation, reference log-probs),
`inference` (answering with a thinker), `mosear`, `preferences`, `evaluation` and `recipes` (the Ray Train entry
points). May import engine (core, models, stages, dataset); jobs/ imports train, never the reverse.
"""
