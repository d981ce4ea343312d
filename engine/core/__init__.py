"""The engine's shared library, used by engine and train alike: typed configs (config_base, config), storage (local or
s3:// through fsspec) and Parquet part files written whole (parts), the clip table schema and clip ids (schema), the
failure policy (failures), media access (media, with media_probe and media_audio, run in a child process by
isolation), near-duplicate fingerprints of a clip (fingerprints), speech SNR (snr), text normalisation and WER/CER
(text) and the SED target format (sed). May import only the standard library and third-party packages, not Ray, and
of engine only core itself - except config, which composes the model backends' config sections from
engine.models.backends (their small config modules).
"""
