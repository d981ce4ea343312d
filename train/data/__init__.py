"""The data path of training: reading SED and preference records with Ray Data and encoding them with the real
Qwen2.5-Omni processor (sed_data, preference_data), collation into batches (collate, preference_collate), the frozen
reference's log-probs for DPO (reference) and `runtime`, the one module here that imports Ray: it builds the Ray
Data plans (read, an actor pool or the driver for small runs) around those plain encoders and scorers. May import
train.core and engine.core.
"""
