"""CA-DPO preference building (sample -> judge -> rank -> pairs) and the AVEm-DPO rejections.

Modules: `schema` (PREFERENCE_SCHEMA, the table the DPO recipes read), `config`, `select` (balanced query
subset), `sample` (transformers sampler) and `vllm_sampling` (ray.data.llm sampler), `judge`, `rank`,
`avem_data`, and `build` (the Ray Data plan and the resumable writer). Run it with jobs/build_preferences.py.
May import engine (core, models, stages, and dataset: the pipeline's actor pools, the writer and ledger) and
train.core, train.data, train.inference; Ray only in `build` and, for ray.data.llm's config, `vllm_sampling`.
"""
