import pytest
import yaml

from engine.core.config import ConfigError, EngineConfig, dump_config, load_config, parse_overrides


def test_overrides_are_nested_and_typed():
    assert parse_overrides(["asr.max_wer=0.4", "limit=10", "lang=en", "resources.asr_concurrency=[1, 3]"]) == {
        "asr": {"max_wer": 0.4},
        "limit": 10,
        "lang": "en",
        "resources": {"asr_concurrency": [1, 3]},
    }


def test_yaml_then_extra_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"input": "a", "output": "b", "asr": {"max_wer": 0.3, "beam_size": 2}}))
    config = load_config(EngineConfig, path, ["asr.max_wer=0.45"], {"output": "c", "input": None})
    assert (config.input, config.output) == ("a", "c")
    assert config.asr.max_wer == 0.45 and config.asr.beam_size == 2
    assert config.media.fps == 2.0 and config.media.max_frames == 40  # defaults live on the type


def test_every_error_is_reported_at_once_with_its_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(EngineConfig, None, ["input=x", "output=y", "asr.max_wer=-1", "media.fps=0",
                                         "asr.modle=tiny", "resources.asr_concurrency=[3, 1]"])
    text = str(info.value)
    assert "4 errors" in text
    for field in ("asr.max_wer", "media.fps", "asr.modle", "resources"):
        assert field in text, field
    assert "(got -1)" in text


def test_missing_input_and_output_named():
    with pytest.raises(ConfigError, match="missing input, output"):
        load_config(EngineConfig, None, [])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["asr.max_wer"])


def test_dump_round_trips():
    config = load_config(EngineConfig, None, ["input=i", "output=o", "media.min_duration_s=1.0"])
    again = EngineConfig.model_validate(yaml.safe_load(dump_config(config)))
    assert again == config


def test_shipped_configs_validate():
    for name in ("demo", "demo_full", "production", "production_open"):
        load_config(EngineConfig, f"jobs/configs/{name}.yaml", ["input=i", "output=o"])


def test_production_names_the_papers_models_with_gpu_per_describe_actor():
    from engine.dataset.pipeline import funnel_stages, minimum_resources

    config = load_config(EngineConfig, "jobs/configs/production.yaml", ["input=s3://b/in", "output=s3://b/out"])
    vllm = config.describe.backend.vllm
    assert config.describe.backend.kind == "vllm" and vllm.model_source == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert vllm.engine_kwargs["tensor_parallel_size"] == 1 and vllm.accelerator_type == "A100"
    assert config.annotate.backend.http.model == "gemini-2.5-pro"
    assert config.annotate.backend.http.api_key_env == "GEMINI_API_KEY"  # a variable name, never a key
    assert config.consistency.method == "judge" and config.consistency.judge.backend.http.model == "gpt-4o"
    assert config.saber_test.enabled and config.saber_test.per_subset == 900
    assert config.saber_test.judge.backend.http.model == "gpt-4o"
    assert config.neardup.enabled  # ten corpora cut from shared films and series
    assert funnel_stages(config) == ["annotation", "probe", "decode", "noise", "fingerprint", "annotate", "asr",
                                     "describe", "consistency", "neardup"]
    # Minimum pools: 1 media task + annotate 1 + asr 4 + judge 1 CPUs; asr 0.5 + one vLLM engine (TP 1) GPUs.
    assert minimum_resources(config) == {"CPU": 7.25, "GPU": 1.5}  # the relation judge (0.25) is in the stream


def test_open_weights_production_runs_the_omni_annotator_on_one_gpu_per_actor():
    from engine.dataset.pipeline import minimum_resources

    config = load_config(EngineConfig, "jobs/configs/production_open.yaml", ["input=s3://b/in", "output=s3://b/o"])
    local = config.annotate.backend.local
    assert (local.model, local.kind, local.device) == ("Qwen/Qwen2.5-Omni-7B", "qwen2_5_omni", "cuda")
    assert config.annotate.pool.num_gpus == 1
    assert config.describe.backend.vllm.model_source == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert config.consistency.judge.backend.http.api_key_env == ""  # an in-cluster vLLM server: no key
    # 1 media + annotate 4 + asr 4 + judge 1 CPUs; asr 0.5 + annotate 1 + one vLLM engine GPUs.
    assert minimum_resources(config) == {"CPU": 10.25, "GPU": 2.5}


def test_a_partial_stage_section_keeps_that_stages_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: i\noutput: o\ndescribe: {enabled: false}\nannotate: {enabled: false}\n"
                    "saber_test: {per_subset: 5}\n")
    config = load_config(EngineConfig, path, ["consistency.judge.enabled=false"])
    assert (config.describe.max_tokens, config.annotate.max_tokens) == (256, 1024)
    assert config.saber_test.judge.max_tokens == config.consistency.judge.max_tokens == 128


def test_config_errors_never_echo_a_key_typed_in_the_wrong_place():
    """An unknown field's value, or a credential-named field's, is not printed (it would reach the job log)."""
    with pytest.raises(ConfigError) as err:
        load_config(EngineConfig, "jobs/configs/demo.yaml", ["annotate.api_key=sk-live-123456", "block_rows=0",
                                                             "media.fps=fast"])
    message = str(err.value)
    assert "sk-live-123456" not in message and "annotate.api_key: Extra inputs are not permitted (value not shown)" \
        in message
    assert "(got 0)" in message and "(got 'fast')" in message  # ordinary mistakes still show what was given
