"""Corpus adapters: the ten source corpora of SABER (and any other, described in YAML) to the engine's manifest.

    from engine.dataset.corpora import load_spec, prepare_manifest
    prepare_manifest([(load_spec("meld"), "/data/MELD.Raw")], "manifest.parquet")

jobs/prepare_corpora.py is the command line. Layout of the package: `spec` (the YAML model), `adapter` (the
generic adapter every built-in corpus is an instance of), `labels` (label file readers), `emotions` (the one
mapping to the unified emotion label), `manifest` (writing the manifest and its report), `specs/` (built-ins).
May import engine.core; no Ray (a manifest is a Parquet file that build_saber reads).
"""

from engine.dataset.corpora.adapter import CorpusError, CorpusResult, prepare_corpus
from engine.dataset.corpora.emotions import EMOTION_TABLE, UNIFIED_EMOTIONS, unified_emotion
from engine.dataset.corpora.manifest import MANIFEST_SCHEMA, prepare_manifest, report_uri
from engine.dataset.corpora.spec import CorpusSpec, builtin_specs, load_spec

__all__ = ["EMOTION_TABLE", "MANIFEST_SCHEMA", "UNIFIED_EMOTIONS", "CorpusError", "CorpusResult", "CorpusSpec",
           "builtin_specs", "load_spec", "prepare_corpus", "prepare_manifest", "report_uri", "unified_emotion"]
