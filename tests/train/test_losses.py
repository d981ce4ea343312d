"""Preference losses checked against values and gradients worked out by hand (plain `math`, no second call).

Notation: ρ = log πθ − log πref, softplus(x) = log(1 + eˣ) = −log σ(−x), so −log σ(h) = softplus(−h).
"""

import math

import pytest
import torch

from train.core.losses import AvemConfig, AvemInputs, avem_loss, dpo_loss, sequence_logps


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def leaf(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, requires_grad=True)


def grads(tensor: torch.Tensor) -> list[float]:
    return tensor.grad.tolist()


# ---------------------------------------------------------------- sequence_logps

LOGITS = torch.tensor([
    [[0.0, 0.0, 0.0], [5.0, -3.0, 2.0], [1.0, 2.0, 0.0], [9.0, 9.0, -9.0]],
    [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [4.0, 4.0, 4.0], [-9.0, 9.0, 9.0]],
])
# Aligned with input_ids: label[0] has no logits before it, so its value (0, not masked) must not count.
LABELS = torch.tensor([[0, 2, -100, 1], [-100, 0, 2, -100]])
# Row 0: logits[0] scores label 2 → log(1/3); logits[1] faces a masked label; logits[2] scores label 1
#        → 2 − log(e + e² + 1); logits[3] has no next label.
# Row 1: logits[0] scores label 0 → 2 − log(e² + 2); logits[1] scores label 2 → 0 − log(2 + e); rest masked.
EXPECTED_LOGPS = [math.log(1 / 3) + 2 - math.log(math.e + math.e**2 + 1),  # −1.506218
                  2 - math.log(math.e**2 + 2) - math.log(2 + math.e)]  # −1.790989


def test_sequence_logps_by_hand():
    out = sequence_logps(LOGITS, LABELS)
    assert out.shape == (2,) and out.dtype == torch.float32
    assert out.tolist() == pytest.approx(EXPECTED_LOGPS, abs=1e-6)
    assert out.tolist() == pytest.approx([-1.506218, -1.790989], abs=1e-6)  # the same, as numbers


def test_sequence_logps_computes_bf16_logits_in_float32():
    # The logits are small integers, exact in bf16, so only the arithmetic's precision could differ.
    out = sequence_logps(LOGITS.bfloat16(), LABELS)
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx(EXPECTED_LOGPS, abs=1e-6)


def test_sequence_logps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(LOGITS, LABELS[:, :3])


# ---------------------------------------------------------------- dpo_loss

# β = 0.5. ρ_chosen = [2, 0, 1], ρ_rejected = [−1, 2, 0], so h = β·(ρ_c − ρ_r) = [1.5, −1.0, 0.5].
DPO_BETA = 0.5
DPO_H = [1.5, -1.0, 0.5]


def dpo_tensors() -> dict[str, torch.Tensor]:
    return {"policy_chosen": leaf([-10.0, -8.0, -12.0]), "policy_rejected": leaf([-11.0, -7.0, -20.0]),
            "ref_chosen": leaf([-12.0, -8.0, -13.0]), "ref_rejected": leaf([-10.0, -9.0, -20.0])}


def test_dpo_loss_value_and_metrics_by_hand():
    out = dpo_loss(**dpo_tensors(), beta=DPO_BETA)
    expected = sum(softplus(-h) for h in DPO_H) / 3
    assert expected == pytest.approx(0.662917, abs=1e-6)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.terms["dpo"].item() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_reward.item() == pytest.approx(0.5 * (2 + 0 + 1) / 3, abs=1e-6)  # 0.5
    assert out.rejected_reward.item() == pytest.approx(0.5 * (-1 + 2 + 0) / 3, abs=1e-6)  # 1/6
    assert out.margin.item() == pytest.approx(1 / 3, abs=1e-6)
    assert out.accuracy.item() == pytest.approx(2 / 3, abs=1e-6)  # h > 0 for samples 0 and 2
    assert not out.margin.requires_grad and not out.terms["dpo"].requires_grad


def test_dpo_loss_gradients_by_hand():
    tensors = dpo_tensors()
    dpo_loss(**tensors, beta=DPO_BETA).loss.backward()
    # d/dπc_i of mean(softplus(−h)) = −β·σ(−h_i)/B, and +β·σ(−h_i)/B for πr_i.
    expected = [DPO_BETA * sigmoid(-h) / 3 for h in DPO_H]
    assert grads(tensors["policy_chosen"]) == pytest.approx([-g for g in expected], abs=1e-6)
    assert grads(tensors["policy_rejected"]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx([0.030404, 0.121843, 0.062923], abs=1e-6)
    # The reference is a constant of the objective even when handed in with requires_grad.
    assert tensors["ref_chosen"].grad is None and tensors["ref_rejected"].grad is None


def test_dpo_loss_is_stable_for_a_very_wrong_preference():
    # h = 1·(−200 − 0) = −200: σ(h) underflows to 0 in float32, so log(σ(h)) would be −inf; the loss is 200.
    zero = torch.zeros(1)
    out = dpo_loss(torch.tensor([-200.0]), zero, zero, zero, beta=1.0)
    assert out.loss.item() == pytest.approx(200.0, abs=1e-4)


def test_dpo_loss_rejects_bad_input():
    ok = torch.zeros(3)
    with pytest.raises(ValueError, match="ref_rejected"):
        dpo_loss(ok, ok, ok, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(ok, ok, ok, ok, beta=0.0)


# ---------------------------------------------------------------- avem_loss

# Two samples. ρ(y_w) = [2, 0], ρ(y_vr) = [−1, 2], ρ(y_er) = [−3, 0], ρ(y_w | swapped) = [−1, 1];
# text-only log-probs π_text(y_w, y_vr, y_er) = [−20, −18, −30] and [−10, −14, −10].
AVEM_VALUES = {
    "policy_chosen": [-10.0, -5.0], "ref_chosen": [-12.0, -5.0],
    "policy_vr": [-9.0, -6.0], "ref_vr": [-8.0, -8.0],
    "policy_er": [-15.0, -7.0], "ref_er": [-12.0, -7.0],
    "policy_chosen_swapped": [-14.0, -6.0], "ref_chosen_swapped": [-13.0, -7.0],
    "text_chosen": [-20.0, -10.0], "text_vr": [-18.0, -14.0], "text_er": [-30.0, -10.0],
}
POLICY = ("policy_chosen", "policy_vr", "policy_er", "policy_chosen_swapped")
CONSTANT = ("ref_chosen", "ref_vr", "ref_er", "ref_chosen_swapped", "text_chosen", "text_vr", "text_er")


def avem_inputs() -> AvemInputs:
    # Every tensor requires grad, the text-only and reference ones included, to show that none leaks.
    return AvemInputs(**{name: leaf(values) for name, values in AVEM_VALUES.items()})


def test_avem_defaults_are_the_papers():
    assert AvemConfig() == AvemConfig(beta=0.1, beta_vr=0.5, beta_er=0.5, lambda_av=1.0, gamma_tpd=0.2)


def test_avem_loss_terms_by_hand_with_paper_defaults():
    # β = 0.1, β_vr = β_er = 0.5, γ = 0.2, λ = 1.
    # h_erp sample 0: 0.1·(2 − 0.5·(−1) − 0.5·(−3)) − 0.2·(−20 − 0.5·(−18) − 0.5·(−30)) = 0.4 − 0.8 = −0.4
    #       sample 1: 0.1·(0 − 0.5·2 − 0.5·0) − 0.2·(−10 − 0.5·(−14) − 0.5·(−10)) = −0.1 − 0.4 = −0.5
    # h_pmp = 0.1·(ρ(y_w) − ρ(y_w | swapped)) = [0.1·(2 + 1), 0.1·(0 − 1)] = [0.3, −0.1]
    out = avem_loss(avem_inputs())
    erp = (softplus(0.4) + softplus(0.5)) / 2
    pmp = (softplus(-0.3) + softplus(0.1)) / 2
    assert (erp, pmp) == pytest.approx((0.943546, 0.649376), abs=1e-6)
    assert out.terms["erp_tpd"].item() == pytest.approx(erp, abs=1e-6)
    assert out.terms["pmp"].item() == pytest.approx(pmp, abs=1e-6)
    assert out.loss.item() == pytest.approx(erp + pmp, abs=1e-6)
    # Response preference: chosen reward 0.1·[2, 0], rejected 0.1·[0.5·(−1) + 0.5·(−3), 0.5·2] = [−0.2, 0.1].
    assert out.chosen_reward.item() == pytest.approx(0.1, abs=1e-6)
    assert out.rejected_reward.item() == pytest.approx(-0.05, abs=1e-6)
    assert out.margin.item() == pytest.approx(0.15, abs=1e-6)  # margins [0.4, −0.1]
    assert out.accuracy.item() == pytest.approx(0.5, abs=1e-6)


def test_avem_loss_gradients_reach_every_policy_term_and_no_constant():
    # Unequal weights so y_vr and y_er gradients differ: β = 0.1, β_vr = 0.25, β_er = 0.75, γ = 0.2, λ = 2.
    # h_erp sample 0: 0.1·(2 + 0.25 + 2.25) − 0.2·(−20 + 4.5 + 22.5) = 0.45 − 1.4 = −0.95
    #       sample 1: 0.1·(0 − 0.5 − 0) − 0.2·(−10 + 3.5 + 7.5) = −0.05 − 0.2 = −0.25
    # h_pmp = [0.3, −0.1] as before. With s = σ(−h_erp), t = σ(−h_pmp), B = 2, loss = mean softplus(−h_erp)
    # + λ·mean softplus(−h_pmp):
    #   d/dπ(y_w) = −β·(s + λ·t)/B,  d/dπ(y_vr) = β·β_vr·s/B,  d/dπ(y_er) = β·β_er·s/B,  d/dπ(y_w|swap) = β·λ·t/B
    config = AvemConfig(beta=0.1, beta_vr=0.25, beta_er=0.75, lambda_av=2.0, gamma_tpd=0.2)
    inputs = avem_inputs()
    out = avem_loss(inputs, config)
    s = [sigmoid(0.95), sigmoid(0.25)]
    t = [sigmoid(-0.3), sigmoid(0.1)]
    erp = (softplus(0.95) + softplus(0.25)) / 2
    pmp = (softplus(-0.3) + softplus(0.1)) / 2
    assert out.loss.item() == pytest.approx(erp + 2 * pmp, abs=1e-6)
    out.loss.backward()
    expected = {
        "policy_chosen": [-0.1 * (s[i] + 2 * t[i]) / 2 for i in range(2)],
        "policy_vr": [0.1 * 0.25 * s[i] / 2 for i in range(2)],
        "policy_er": [0.1 * 0.75 * s[i] / 2 for i in range(2)],
        "policy_chosen_swapped": [0.1 * 2 * t[i] / 2 for i in range(2)],
    }
    for name in POLICY:
        assert all(g != 0 for g in grads(getattr(inputs, name))), name
        assert grads(getattr(inputs, name)) == pytest.approx(expected[name], abs=1e-7), name
    for name in CONSTANT:
        assert getattr(inputs, name).grad is None, name


def test_avem_loss_reduces_to_plain_dpo_against_one_rejection():
    # γ = 0, λ = 0, β_vr = 1, β_er = 0: the TPD offset, the PMP term and y_er all drop out, leaving Eq. 3's DPO of
    # y_w over y_vr: loss = mean(−log σ(β·(ρ(y_w) − ρ(y_vr)))), h = 0.1·[2 − (−1), 0 − 2] = [0.3, −0.2].
    config = AvemConfig(beta=0.1, beta_vr=1.0, beta_er=0.0, lambda_av=0.0, gamma_tpd=0.0)
    inputs = avem_inputs()
    out = avem_loss(inputs, config)
    expected = (softplus(-0.3) + softplus(0.2)) / 2
    assert expected == pytest.approx(0.676247, abs=1e-6)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.terms["erp_tpd"].item() == pytest.approx(expected, abs=1e-6)
    plain = dpo_loss(inputs.policy_chosen, inputs.policy_vr, inputs.ref_chosen, inputs.ref_vr, beta=0.1)
    assert out.loss.item() == pytest.approx(plain.loss.item(), abs=1e-6)
    out.loss.backward()
    assert grads(inputs.policy_er) == [0.0, 0.0]
    assert grads(inputs.policy_chosen_swapped) == [0.0, 0.0]


@pytest.mark.parametrize(("overrides", "field"), [
    ({"beta": 0.0}, "beta"),
    ({"beta_vr": 0.7}, "beta_vr \\+ beta_er"),
    ({"beta_vr": 1.5, "beta_er": -0.5}, "beta_er"),
    ({"gamma_tpd": -0.1}, "gamma_tpd"),
    ({"lambda_av": -1.0}, "lambda_av"),
])
def test_avem_config_rejects_bad_values(overrides, field):
    with pytest.raises(ValueError, match=field):
        AvemConfig(**overrides)


def test_avem_inputs_reject_mismatched_shapes():
    values = {name: torch.tensor(v) for name, v in AVEM_VALUES.items()}
    with pytest.raises(ValueError, match="text_er"):
        AvemInputs(**{**values, "text_er": torch.zeros(3)})
