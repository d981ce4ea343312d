"""Building the SABER dataset: `sources` and `corpora/` (inputs and corpus adapters into the clip table), `pipeline`
(the runtime: the one module that turns stages into a Ray Data plan - actor pools, block slicing), `build`
(run_build: one whole run inside a Ray driver), `writer` (the clips/ table, which is the resume checkpoint) and
`ledger` (the attempts of retryable failures), `report`, `holdout` and `saber_test` (SABER-Test selection and
leakage-free splits), `exports`, `card` (the dataset card) and `neardup`. May import engine.core, models, stages and
ops; Ray only in pipeline and build.
"""
