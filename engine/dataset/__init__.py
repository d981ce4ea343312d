"""Building the SABER dataset: `sources` and `corpora/` (inputs and corpus adapters into the clip table), `pipeline`
(the runtime: the one module that turns stages into a Ray Data plan - actor pools, block slicing, the vLLM
processor), `build` (run_build: one whole run inside a Ray driver), `writer` (the clips/ table, which is the resume
checkpoint) and `ledger` (the attempts of retryable failures), `neardup` (near-duplicate groups across corpora),
`report`, `holdout` and `saber_test` (SABER-Test selection and leakage-free splits), `exports` and `exports_media`
(ms-swift / LLaMA-Factory SFT and preference files, s3:// media made local), `card` (the dataset card), `browse` and
`curation` (the local data browser over a build and the curation marks it writes). May import engine.core, models,
stages and ops; Ray only in pipeline and build.
"""
