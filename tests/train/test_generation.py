"""ThinkerGenerator: K distinct samples per clip, reproducible per clip, greedy when T=0, AR by flag."""

import pytest

from train.core.config import DataConfig
from train.inference.generation import GenerationConfig, ThinkerGenerator, clip_seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generator(tiny_omni):
    return ThinkerGenerator(str(tiny_omni), DataConfig(max_frames=4), attn_implementation="eager")


def test_samples_are_distinct_reproducible_and_seeded_per_clip(generator, asr_set):
    folder, _ = asr_set
    record = {"clip_id": "c1", "source_uri": str(folder / "good_000.mp4"), "lang": "en"}
    sampling = GenerationConfig(num_samples=4, temperature=0.8, max_new_tokens=16)
    first = generator.generate(record, sampling)
    assert len(first) == 4 and len(set(first)) == 4  # the tiny random model: four different draws
    assert generator.generate(record, sampling) == first  # same clip, same seed: same draws (resume-safe)
    other = generator.generate({**record, "clip_id": "c2"}, sampling)
    assert other != first and clip_seed(0, "c1") != clip_seed(0, "c2")
    greedy = GenerationConfig(max_new_tokens=16)
    assert generator.generate(record, greedy) == generator.generate({**record, "clip_id": "c2"}, greedy)
    with pytest.raises(ValueError, match="needs temperature > 0"):
        GenerationConfig(num_samples=2, temperature=0.0)


def test_attention_reallocation_flag_reallocates_every_step_and_restores_eager(generator, asr_set, reallocation_spy):
    folder, _ = asr_set
    record = {"clip_id": "c1", "source_uri": str(folder / "good_001.mp4"), "lang": "en"}
    greedy = GenerationConfig(max_new_tokens=12)
    plain = generator.generate(record, greedy)
    assert reallocation_spy.calls == 0
    # A low threshold flags every layer whose audio mass is above 1/1000 of its visual mass: with audio and
    # video in the prompt, some head of each layer is above its layer's ratio and must be moved.
    with_ar = generator.generate(record, greedy.model_copy(update={"attention_reallocation": True,
                                                                   "reallocation_tau": 1e-3}))
    layers = len(generator.model.model.language_model.layers)
    assert reallocation_spy.calls >= layers and reallocation_spy.calls % layers == 0  # each layer, each step
    assert reallocation_spy.changed == reallocation_spy.calls
    calls = reallocation_spy.calls
    assert len(with_ar) == 1 and generator.generate(record, greedy) == plain
    assert reallocation_spy.calls == calls  # off again
    assert generator.model.model.language_model.config._attn_implementation == "eager"  # restored after AR
