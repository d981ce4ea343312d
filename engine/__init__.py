"""The SABER engine: builds the multimodal emotion dataset (one row per clip, kept or rejected with a reason) as a
streaming Ray Data plan. Packages, bottom up: `core` (config, storage, clip schema, failure policy, media, text, SED
format: no Ray, imported by everything), `models` (model backends, prompts, verdict parsers), `stages` (one class
per stage, no Ray), `ops` (metrics, capacity plan, job launch), `dataset` (building the dataset: sources and corpus
adapters, the plan, one build run, writer and ledger, report, SABER-Test holdout, exports, dataset card) and
`devkit` (demo data, tiny models, benchmarks: for the demo, tests and jobs/benchmark.py, not for production data).
train/ and jobs/ import from here; engine imports neither.
"""
