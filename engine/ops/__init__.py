"""Running the engine on a cluster: `monitoring` (saber_* metrics through ray.util.metrics, made lazily so stages stay
importable without Ray), `capacity` (node-hours and cost per stage, jobs/plan.py; `capacity_io` reads benchmark
results into it and prints it) and `launch` (a job's config,
logging and Ray connection). May import engine.core; stages use monitoring.
"""
