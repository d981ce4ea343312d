"""The Ray Train entry points: `sft` (SED supervised fine-tuning), `dpo` (CA-DPO and AVEm-DPO, config in dpo_config),
`ca_dpo` (rounds of preference building + DPO) and `benchmarking` (the SFT step timed for jobs/benchmark.py). One
readable file per recipe: setup, a short train() with the step in its own function, checkpoint and ray.train.report.
May import every train package and engine; Ray Train lives here.
"""
