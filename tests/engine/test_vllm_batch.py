"""The ray.data.llm vLLM path for descriptions, as far as a CPU without vLLM allows: the processor built from
our config, and clip rows mapped through Ray's own pre/postprocess wrappers to requests and back."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from engine.core.config import ConfigError, EngineConfig, load_config
from engine.core.schema import WORK_SCHEMA, new_row, reject
from engine.dataset.pipeline import minimum_resources, processor_config
from engine.devkit.tiny_vl import build_tiny_qwen2_5_vl
from engine.models.backends.vllm_batch import ERROR_COLUMN, VllmBatchConfig
from engine.models.prompts import DESCRIBE
from engine.stages.describe import DescribeStage
from engine.stages.describe_vllm import describe_request, describe_result
from tests.conftest import CACHE


def _jpeg(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _row(name="a"):
    return new_row(f"/c/{name}.mp4", frames_jpeg=[_jpeg(10), _jpeg(200), _jpeg(90)], frame_times=[0.0, 0.5, 1.0])


@pytest.fixture(scope="module")
def processor():
    from ray.data.llm import build_processor

    # A local model folder: the processor reads its config.json instead of asking the hub.
    cfg = VllmBatchConfig(model_source=str(build_tiny_qwen2_5_vl(CACHE / "tiny_vl")), concurrency=(1, 3),
                          batch_size=8, accelerator_type="A100")
    return build_processor(processor_config(cfg), preprocess=lambda r: describe_request(r, 64, 0.0),
                           postprocess=lambda row: row), cfg


def test_processor_config_and_stages(processor):
    built, cfg = processor
    config = processor_config(cfg)
    assert config.model_source == cfg.model_source and config.batch_size == 8 and config.concurrency == (1, 3)
    assert config.accelerator_type == "A100" and config.should_continue_on_error
    assert config.engine_kwargs["limit_mm_per_prompt"] == {"image": 40}  # one image part per sampled frame
    assert built.list_stage_names() == ["PrepareMultimodalStage", "ChatTemplateStage", "TokenizeStage",
                                        "vLLMEngineStage", "DetokenizeStage"]


def test_requests_are_the_describe_stages_own(processor):
    built, _ = processor
    row = _row()
    wrapped = built.preprocess(row)  # Ray's wrapper: {data column: row + our request columns}
    data = next(iter(wrapped.values()))
    assert data["messages"] == DescribeStage.build_request(row, 64).messages
    content = data["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url"] * 3 + ["text"] and content[-1]["text"] == DESCRIBE.text
    assert data["sampling_params"] == {"max_tokens": 64, "temperature": 0.0}
    assert data["frames_jpeg"] == row["frames_jpeg"]  # the clip's columns ride along to the answer
    rejected = describe_request(reject(_row("b"), "noise", "too_noisy"), 64, 0.0)
    assert rejected["sampling_params"]["max_tokens"] == 1 and rejected["messages"][0]["content"] == "ok"


def _answer(built, row, text="", error=""):
    """What the engine stages add, then Ray's postprocess wrapper (which lets error rows bypass ours)."""
    data = next(iter(built.preprocess(row).values()))
    data.update(generated_text=text, **({ERROR_COLUMN: error} if error else {}))
    return built.postprocess({built.DATA_COLUMN: data})


def test_answers_and_errors_map_back_to_clip_rows(processor):
    built, cfg = processor
    kept = describe_result(_answer(built, _row(), "  A grey room; a face talks.  "), cfg.model_source)
    assert set(kept) == set(WORK_SCHEMA.names) and kept["status"] == "kept"
    assert kept["description"] == "A grey room; a face talks."
    assert json.loads(kept["provenance"])["describe"] == f"{cfg.model_source} {DESCRIBE.version}"
    failed = describe_result(_answer(built, _row(), error="prompt too long: 41 images"), cfg.model_source)
    assert (failed["status"], failed["reject_stage"], failed["reject_reason"]) == ("rejected", "describe",
                                                                                    "model_error")
    assert "41 images" in failed["reject_detail"]
    empty = describe_result(_answer(built, _row(), "   "), cfg.model_source)
    assert empty["reject_reason"] == "empty_description"
    upstream = describe_result(_answer(built, reject(_row(), "noise", "too_noisy"), "ok"), cfg.model_source)
    assert (upstream["reject_stage"], upstream["description"]) == ("noise", None)


def test_config_places_vllm_on_describe_only_and_counts_its_gpus(tmp_path):
    vllm = {"kind": "vllm", "vllm": {"engine_kwargs": {"tensor_parallel_size": 2}, "concurrency": [2, 4]}}
    config = EngineConfig(input="in", output="out", asr={"enabled": False},
                          describe={"enabled": True, "backend": vllm})
    assert minimum_resources(config)["GPU"] == 4  # 2 engines x tensor parallel 2
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"input": "i", "output": "o", "annotate": {"enabled": True, "backend": vllm}}))
    with pytest.raises(ConfigError, match="describe stage only"):
        load_config(EngineConfig, path, [])


def test_a_verdict_request_carries_its_schema_as_structured_outputs():
    from engine.models.backends.base import ChatRequest
    from engine.models.backends.vllm_batch import chat_request_row
    from engine.models.verdicts import RELATION_SCHEMA

    request = ChatRequest([{"role": "user", "content": "judge"}], max_tokens=96, response_schema=RELATION_SCHEMA)
    row = chat_request_row(request)
    assert row["messages"] == request.messages
    structured = row["sampling_params"].pop("structured_outputs")
    assert row["sampling_params"] == {"max_tokens": 96, "temperature": 0.0}
    # A JSON string (one Arrow type for every row), keys in the schema's order: relation is written first.
    assert json.loads(structured["json"]) == RELATION_SCHEMA.schema
    assert list(json.loads(structured["json"])["properties"]) == ["relation", "intensity", "reason"]
    plain = chat_request_row(ChatRequest([{"role": "user", "content": "describe"}], max_tokens=8))
    assert "structured_outputs" not in plain["sampling_params"]


def test_structured_outputs_backend_goes_to_the_engine_kwargs():
    pytest.importorskip("ray.data.llm")
    assert "structured_outputs_config" not in processor_config(VllmBatchConfig()).engine_kwargs
    config = processor_config(VllmBatchConfig(structured_outputs_backend="xgrammar"))
    assert config.engine_kwargs["structured_outputs_config"] == {"backend": "xgrammar"}
    assert config.engine_kwargs["enable_prefix_caching"]  # the configured kwargs stay
