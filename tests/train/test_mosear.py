"""MoSEAR: attention reallocation worked out by hand, MoSE experts on a tiny real Qwen2.5-Omni thinker."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

from train.core.config import DataConfig
from train.data.collate import collate_sed
from train.data.sed_data import IGNORE_INDEX, SedEncoder
from train.mosear import (
    MoseConfig,
    attach_mose,
    attention_reallocation,
    load_mose,
    load_mose_state_dict,
    mose_state_dict,
    reallocate,
    save_mose,
)
from train.mosear.attach import ModalityContext, gate_positions, modality_context
from train.mosear.mose import LoraMixture, ModalityGate
from train.mosear.realloc import TOKENS_KWARG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# One decoding step of a 3-head layer over keys [text, audio, audio, visual, visual, text].
AUDIO = torch.tensor([[False, True, True, False, False, False]])
VISUAL = torch.tensor([[False, False, False, True, True, False]])
ROWS = torch.tensor([[[[0.1, 0.3, 0.2, 0.1, 0.1, 0.2]],  # S(A) = 0.5, S(V) = 0.2: c_0 = 2.5
                      [[0.2, 0.1, 0.1, 0.2, 0.2, 0.2]],  # S(A) = 0.2, S(V) = 0.4: c_1 = 0.5
                      [[0.1, 0.2, 0.2, 0.1, 0.1, 0.3]]]], dtype=torch.float64)  # 0.4 / 0.2: c_2 = 2.0


def _mass(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (rows * mask[:, None, None, :]).sum(-1)


def test_reallocation_by_hand():
    out = reallocate(ROWS, AUDIO, VISUAL, tau=1.0)
    # c = (0.5 + 0.2 + 0.4) / (0.2 + 0.4 + 0.2) = 1.375 > tau; heads 0 and 2 have c_h > c.
    # Head 0: Delta = (0.5 - 1.375 * 0.2) / 2.375 = 9/95; audio x (1 - (9/95)/0.5) = 77/95, visual x 140/95.
    expected_0 = [0.1, 0.3 * 77 / 95, 0.2 * 77 / 95, 0.1 * 140 / 95, 0.1 * 140 / 95, 0.2]
    # Head 2: Delta = (0.4 - 1.375 * 0.2) / 2.375 = 1/19; audio x (1 - (1/19)/0.4) = 33/38, visual x 24/19.
    expected_2 = [0.1, 0.2 * 33 / 38, 0.2 * 33 / 38, 0.1 * 24 / 19, 0.1 * 24 / 19, 0.3]
    assert out[0, 0, 0].tolist() == pytest.approx(expected_0, abs=1e-12)
    assert out[0, 2, 0].tolist() == pytest.approx(expected_2, abs=1e-12)
    assert torch.equal(out[0, 1], ROWS[0, 1])  # c_1 = 0.5 <= c: exactly untouched
    ratio = _mass(out, AUDIO) / _mass(out, VISUAL)
    assert ratio[0, [0, 2], 0].tolist() == pytest.approx([1.375, 1.375], abs=1e-12)  # each biased head now at c
    assert out.sum(-1).flatten().tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    text = ~(AUDIO | VISUAL)[0]
    assert torch.equal(out[..., text], ROWS[..., text])
    assert out[0, 0, 0, 1] / out[0, 0, 0, 2] == pytest.approx(1.5)  # 0.3 : 0.2 within the audio keys
    assert (out >= 0).all()


def test_reallocation_leaves_unbiased_layers_and_visionless_heads_alone():
    for tau in (1.375, 2.0):  # c = 1.375 is not > tau: the layer is not biased
        assert torch.equal(reallocate(ROWS, AUDIO, VISUAL, tau=tau), ROWS)
    no_visual = torch.zeros_like(VISUAL)  # an audio-only sample: c is infinite, nothing can move
    assert torch.equal(reallocate(ROWS, AUDIO, no_visual), ROWS)
    rows = ROWS.clone()
    rows[0, 0, 0] = torch.tensor([0.3, 0.3, 0.2, 0.0, 0.0, 0.2], dtype=torch.float64)  # head 0: S(V) = 0
    out = reallocate(rows, AUDIO, VISUAL)
    assert torch.equal(out[0, 0], rows[0, 0])  # no visual weights to scale up (Eq. 13 divides by S(V))
    assert not torch.equal(out[0, 2], rows[0, 2])  # c = 1.1 / 0.6: head 2 (c_h = 2) is still moved


def test_reallocation_properties_on_random_rows():
    gen = torch.Generator().manual_seed(0)
    batch, heads, queries, keys = 3, 4, 5, 12
    rows = torch.softmax(3 * torch.randn(batch, heads, queries, keys, generator=gen, dtype=torch.float64), -1)
    kind = torch.randint(0, 3, (batch, keys), generator=gen)  # 0 text, 1 audio, 2 visual
    audio, visual = kind == 1, kind == 2
    out = reallocate(rows, audio, visual, tau=0.5)
    mass_a, mass_v = _mass(rows, audio), _mass(rows, visual)
    c = mass_a.sum(1, keepdim=True) / mass_v.sum(1, keepdim=True)
    biased = (c > 0.5) & (mass_a / mass_v > c)
    assert biased.any() and (~biased).any()
    assert torch.equal(out[~biased], rows[~biased])
    ratio = _mass(out, audio) / _mass(out, visual)
    assert torch.allclose(ratio[biased], c.expand_as(ratio)[biased])
    assert torch.allclose(out.sum(-1), rows.sum(-1))
    assert torch.equal(out * ~(audio | visual)[:, None, None], rows * ~(audio | visual)[:, None, None])
    for mask in (audio, visual):  # proportions inside each modality: one factor per row
        factor = torch.where(mask[:, None, None], out / rows, float("nan"))
        spread = factor.nan_to_num(0).amax(-1) - torch.where(factor.isnan(), math.inf, factor).amin(-1)
        assert spread[mask.any(-1)].abs().max() < 1e-12
    assert (out >= 0).all()


def test_gate_stays_within_epsilon_of_a_half():
    gen = torch.Generator().manual_seed(0)
    gate = ModalityGate(hidden=4, gate_hidden=3, epsilon=0.1)
    v, n = torch.randn(64, 4, generator=gen), torch.randn(64, 4, generator=gen)
    assert torch.equal(gate(v, n), torch.full((64,), 0.5))  # f's last layer starts at zero
    with torch.no_grad():
        for param in gate.parameters():
            param.copy_(100 * torch.randn(param.shape, generator=gen))
        lam = torch.cat([gate(1e4 * v, 1e4 * n), gate(-1e4 * v, 1e4 * n), gate(1e4 * v, -1e4 * n)])
        assert lam.min() >= 0.4 - 1e-6 and lam.max() <= 0.6 + 1e-6  # float32 rounding of 0.5 +- 0.1
        for bias, bound in ((1e9, 0.6), (-1e9, 0.4)):  # saturated: the bounds are reached, not passed
            gate.net[-1].bias.fill_(bias)
            assert gate(v, n).tolist() == pytest.approx([bound] * 64, abs=1e-6)


def test_lora_mixture_by_hand():
    mix = LoraMixture(hidden=2, rank=1, num_up=2)
    with torch.no_grad():
        mix.reduce.weight.copy_(torch.tensor([[1.0, 2.0]]))  # A
        mix.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # W
        mix.expand.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # [B_1 | B_2], B_1 = (1, 0), B_2 = (0, 2)
    # x = (1, 1): A x = 3, W x = (1, 0) -> alpha = (e, 1) / (e + 1); E(x) = alpha_1 (3, 0) + alpha_2 (0, 6).
    alpha_1 = math.e / (math.e + 1)
    assert mix(torch.tensor([1.0, 1.0])).tolist() == pytest.approx([3 * alpha_1, 6 * (1 - alpha_1)], abs=1e-6)
    assert torch.equal(LoraMixture(2, 1, 2)(torch.ones(2)), torch.zeros(2))  # B starts at zero


def test_gate_positions_are_the_real_prompt_tokens():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX]])
    assert gate_positions(ids, attention, None, None).tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert gate_positions(ids, attention, labels, None).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    explicit = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert gate_positions(ids, attention, labels, explicit).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    with pytest.raises(ValueError, match="labels"):
        gate_positions(ids, attention, labels[:, :3], None)


@pytest.mark.parametrize("cache_kwarg", ["cache", "past_key_values"])
def test_a_forward_with_a_filled_cache_is_a_decoding_step(cache_kwarg):
    """transformers 5.24 passes the KV cache as `cache=`, earlier releases as `past_key_values=`: either way a
    forward over a filled cache extends the prompt's masks and keeps its lambda (no gate mask)."""
    from transformers import DynamicCache

    context = ModalityContext(visual_ids=(9,), audio_ids=(8,))
    _, prompt = context.before_forward(None, (), {"input_ids": torch.tensor([[9, 8, 5]])})
    assert prompt[TOKENS_KWARG].gate_mask is not None
    cache = DynamicCache()
    cache.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), 0)
    _, step = context.before_forward(None, (), {"input_ids": torch.tensor([[9]]), cache_kwarg: cache})
    tokens = step[TOKENS_KWARG]
    assert tokens.gate_mask is None and tokens.ar_first_row == 0
    assert tokens.visual.tolist() == [[True, False, False, True]]
    assert tokens.audio.tolist() == [[False, True, False, False]]


def test_config_errors_name_the_field(tiny_omni):
    for bad in ({"epsilon": 0.6}, {"layers": []}, {"layers": [1, 1]}, {"target": "attn"}, {"rank": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MoseConfig(**bad)
    with pytest.raises(ValueError, match=r"mose.layers \[5\]"):
        attach_mose(_thinker(tiny_omni), MoseConfig(layers=[5]))


# ---- the tiny thinker on real processor examples ----

@pytest.fixture(scope="module")
def examples(tiny_omni):
    """Two SED examples (8 video tokens each; 2 s and 1 s of audio: 50 and 25 audio tokens)."""
    processor = AutoProcessor.from_pretrained(tiny_omni)
    encoder = SedEncoder(processor, DataConfig(sed="x", max_pixels=56 * 56))
    frames = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    frames[:, :28] = 200  # not blank: the visual tokens differ from one another
    made = [encoder.encode({"clip_id": "c", "lang": "en", "target": target}, frames, np.full(n, 0.1, np.float32))
            for target, n in (("## Reasoning\nAnger.", 32000), ("## Reasoning\nCalm, then a sudden shout.", 16000))]
    return processor, made


@pytest.fixture(scope="module")
def batch(examples):
    processor, made = examples
    return collate_sed({k: [m[k] for m in made] for k in made[0]}, processor.tokenizer.pad_token_id)


def _thinker(path) -> Qwen2_5OmniThinkerForConditionalGeneration:
    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()


def _prompts(examples) -> dict[str, torch.Tensor]:
    """The two prompts (target removed), left-padded for generate, with their media."""
    processor, made = examples
    prompts = [m["input_ids"][m["labels"] == IGNORE_INDEX] for m in made]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), processor.tokenizer.pad_token_id)
    attention = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.from_numpy(prompt)
        attention[i, width - len(prompt):] = 1
    media = collate_sed({k: [m[k] for m in made] for k in made[0]}, processor.tokenizer.pad_token_id)
    media = {k: v for k, v in media.items() if k not in ("input_ids", "attention_mask", "labels")}
    return {"input_ids": ids, "attention_mask": attention, **media}


# A random tiny model may well "say" a media placeholder; a real one does not, and the forward over the generated
# sequence would then look for the media of that placeholder.
def _greedy(model) -> dict:
    placeholders = [model.config.audio_token_id, model.config.image_token_id, model.config.video_token_id]
    return {"max_new_tokens": 4, "do_sample": False, "suppress_tokens": placeholders}


def _randomize(experts, scale: float = 0.2, gen: torch.Generator | None = None) -> None:
    """Move every expert and gate weight away from its initial value (as training would)."""
    gen = gen or torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in experts:
            for param in module.parameters():
                param.copy_(scale * torch.randn(param.shape, generator=gen))


def test_attached_thinker_starts_equal_to_the_base(tiny_omni, batch):
    base = _thinker(tiny_omni)
    model = _thinker(tiny_omni)
    experts = attach_mose(model, MoseConfig(rank=8, gate_hidden=16))
    assert len(experts) == 2  # both decoder layers
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base(**batch).logits)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.mose." in name for name in trainable)


def test_backward_reaches_only_experts_and_gates(tiny_omni, batch):
    model = _thinker(tiny_omni)
    attach_mose(model, MoseConfig(rank=8, gate_hidden=16))
    model.train()
    model(**batch).loss.backward()
    for name, param in model.named_parameters():
        if ".mlp.mose." in name:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    # B gets gradient first (A, W and the gate follow once B is non-zero), wherever its tokens reach the loss:
    # everywhere in layer 0, but in the last layer video positions only feed their own (unlabelled) logits.
    moving = {n.removeprefix("model.language_model.layers.") for n, p in model.named_parameters()
              if n.endswith("expand.weight") and p.grad.abs().sum() > 0}
    assert moving == {f"{layer}.mlp.mose.{expert}.expand.weight" for layer, expert in
                      [(0, "omni_expert"), (0, "visual_expert"), (0, "nonvisual_expert"),
                       (1, "omni_expert"), (1, "nonvisual_expert")]}


def test_each_expert_changes_only_its_own_tokens(tiny_omni, batch):
    model = _thinker(tiny_omni)
    layer = model.model.language_model.layers[1]
    [_, experts] = attach_mose(model, MoseConfig(rank=8, gate_hidden=16))
    outputs = []
    layer.mlp.register_forward_hook(lambda module, args, output: outputs.append(output.detach()))
    with torch.no_grad():
        model(**batch)
        for name in ("visual_expert", "nonvisual_expert", "omni_expert"):
            _randomize([getattr(experts, name)])
            model(**batch)
            torch.nn.init.zeros_(getattr(experts, name).expand.weight)
    changed = [(out != outputs[0]).any(-1) for out in outputs[1:]]  # [B, T] per perturbed expert
    video = batch["input_ids"] == model.config.video_token_id
    assert video.sum(1).tolist() == [8, 8]
    assert torch.equal(changed[0], video)  # visual expert: the video tokens and nothing else
    assert torch.equal(changed[1], ~video)  # non-visual: audio, text (and padding)
    assert changed[2].all()  # omni: every token


def test_checkpointed_layers_replay_their_own_masks(tiny_omni, batch):
    """Two forwards, then one backward (DPO's chosen and rejected): with gradient checkpointing each layer
    recomputes with the masks of its own forward, so the gradients are those of two separate passes."""
    swapped = {k: v.flip(0) for k, v in batch.items()}  # the rows in the other order: same shapes, other masks
    first_clip = len(batch["pixel_values_videos"]) // 2  # the patches of clip 0, then those of clip 1
    swapped["pixel_values_videos"] = batch["pixel_values_videos"].roll(first_clip, 0)
    grads = []
    for checkpointing in (False, True):
        model = _thinker(tiny_omni)
        _randomize(attach_mose(model, MoseConfig(rank=8, gate_hidden=16)))
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        (model(**batch).loss + model(**swapped).loss).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_a_few_steps_lower_the_loss(tiny_omni, batch):
    torch.manual_seed(0)
    model = _thinker(tiny_omni)
    attach_mose(model, MoseConfig(rank=8, gate_hidden=16))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_generate_with_mose_equals_teacher_forcing(tiny_omni, examples):
    """Masks and lambda reach the layers while decoding: the cached steps give the logits of one full forward
    whose lambda is taken over the prompt (mose_prompt_mask), for both left-padded rows."""
    model = _thinker(tiny_omni)
    experts = attach_mose(model, MoseConfig(rank=8, gate_hidden=16))
    _randomize(experts)
    prompts = _prompts(examples)
    with torch.no_grad():
        out = model.generate(**prompts, **_greedy(model), output_logits=True, return_dict_in_generate=True)
        width, new = prompts["input_ids"].shape[1], len(out.logits)
        attention = torch.cat([prompts["attention_mask"], torch.ones(2, new, dtype=torch.long)], dim=1)
        prompt_mask = torch.zeros_like(attention, dtype=torch.bool)
        prompt_mask[:, :width] = True
        full = model(**{**prompts, "input_ids": out.sequences, "attention_mask": attention},
                     mose_prompt_mask=prompt_mask).logits
    for step, logits in enumerate(out.logits):
        assert torch.allclose(full[:, width - 1 + step], logits, atol=1e-5), step
    assert not torch.allclose(full, _thinker(tiny_omni)(**{**prompts, "input_ids": out.sequences,
                                                           "attention_mask": attention}).logits, atol=1e-3)


def _layer0_weights(model) -> list[torch.Tensor]:
    captured = []
    model.model.language_model.layers[0].self_attn.register_forward_hook(
        lambda module, args, output: captured.append(output[1].detach()))
    return captured


def test_generate_with_reallocation(tiny_omni, examples):
    model = _thinker(tiny_omni)
    prompts = _prompts(examples)
    captured = _layer0_weights(model)
    with torch.no_grad():
        plain = model.generate(**prompts, **_greedy(model))
        plain_prefill = captured[0]
        captured.clear()
        with attention_reallocation(model, tau=1.0):
            assert model.config.text_config._attn_implementation == "eager_ar"
            assert model.config.vision_config._attn_implementation == "eager"  # the LM only
            sequences = model.generate(**prompts, **_greedy(model))
        assert model.config.text_config._attn_implementation == "eager"
        assert torch.equal(model.generate(**prompts, **_greedy(model)), plain)  # off again
    width = prompts["input_ids"].shape[1]
    assert sequences.shape == (2, width + 4)
    # Layer 0 sees embeddings only, so a plain forward over the generated sequence gives the weights it had
    # before reallocation, at every step.
    attention = torch.cat([prompts["attention_mask"], torch.ones(2, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        original = model(**{**prompts, "input_ids": sequences, "attention_mask": attention},
                         output_attentions=True).attentions[0]
    audio = sequences == model.config.audio_token_id
    visual = sequences == model.config.video_token_id
    prefill, steps = captured[0], captured[1:4]
    assert torch.equal(prefill[:, :, :-1], plain_prefill[:, :, :-1])  # the prompt rows: untouched
    moved = 0
    for step, after in enumerate([prefill[:, :, -1:], *steps]):
        query, keys = width - 1 + step, width + step
        before = original[:, :, query: query + 1, :keys]
        assert torch.allclose(after, reallocate(before, audio[:, :keys], visual[:, :keys]), atol=1e-6)
        assert torch.allclose(after.sum(-1), before.sum(-1), atol=1e-6)
        c = _mass(before, audio[:, :keys]).sum(1) / _mass(before, visual[:, :keys]).sum(1)
        ratio = _mass(after, audio[:, :keys]) / _mass(after, visual[:, :keys])
        changed = (after - before).abs().amax(-1) > 1e-6  # [B, H, 1]
        assert torch.allclose(ratio[changed], c[:, None].expand_as(ratio)[changed], rtol=1e-4)
        assert (c > 1).all() or not changed.any()
        moved += int(changed.sum())
    assert moved > 0  # the tiny model does attend more to its 50 / 25 audio tokens than to its 8 video tokens


def test_mose_weights_round_trip(tiny_omni, batch, tmp_path):
    model = _thinker(tiny_omni)
    _randomize(attach_mose(model, MoseConfig(rank=8, gate_hidden=16, layers=[1])))
    state = mose_state_dict(model)
    assert state and all(key.startswith("model.language_model.layers.1.mlp.mose.") for key in state)
    save_mose(model, tmp_path / "mose")
    loaded = _thinker(tiny_omni)
    assert load_mose(loaded, tmp_path / "mose") == MoseConfig(rank=8, gate_hidden=16, layers=[1])
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    with pytest.raises(KeyError, match="missing"):
        load_mose_state_dict(loaded, {k: v for k, v in state.items() if "gate" not in k})


def test_a_deep_copy_has_its_own_experts_and_context(tiny_omni, batch):
    """DPO keeps a frozen copy of the policy as reference: its hooks must use its own experts."""
    model = _thinker(tiny_omni)
    experts = attach_mose(model, MoseConfig(rank=8, gate_hidden=16))
    reference = copy.deepcopy(model)
    _randomize(experts)
    assert modality_context(reference) is not modality_context(model)
    with torch.no_grad():
        assert torch.equal(reference(**batch).logits, _thinker(tiny_omni)(**batch).logits)
        assert not torch.equal(model(**batch).logits, reference(**batch).logits)
