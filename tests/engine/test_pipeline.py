from engine.config import EngineConfig, load_config
from engine.pipeline import stage_backend


def test_http_answers_are_cached_under_the_output_by_default(tmp_path):
    config = load_config(EngineConfig, None, [
        "input=/in", f"output={tmp_path}", "annotate.enabled=true", "annotate.backend.kind=http",
        "annotate.backend.http.base_url=http://127.0.0.1:9/v1", "annotate.backend.http.model=m",
        "annotate.backend.http.api_key_env="])
    backend = stage_backend(config, config.annotate.backend, "annotate")
    assert backend.config.cache_dir == str(tmp_path / "cache" / "annotate")
    explicit = config.annotate.backend.model_copy(
        update={"http": config.annotate.backend.http.model_copy(update={"cache_dir": "/elsewhere"})})
    assert stage_backend(config, explicit, "annotate").config.cache_dir == "/elsewhere"
