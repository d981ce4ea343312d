"""One stage per module: a small class whose `__init__` loads its model once per actor and whose `__call__(rows) ->
rows` declares the columns it needs and produces; a bad clip becomes a row with a reason. Stages never import Ray
(engine.dataset.pipeline turns them into Ray Data calls). May import engine.core, engine.models and
engine.ops.monitoring.
"""
