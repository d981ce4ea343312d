"""Preference-optimisation losses: sigmoid DPO (SABER-LLM's CA-DPO, Eq. 3) and AVEm-DPO (Eqs. 4-10).

The losses work on per-sequence log-probabilities ([B] tensors), never on models: the recipe runs the
forward passes and `sequence_logps` turns each one's logits into summed log-probs of the response tokens.
Keeping the maths apart from the forward passes lets the tests pin every value and gradient by hand.

Conventions shared by both losses:
- log-probs are token SUMS over the response (not means), as in the DPO paper and TRL's default;
- reference (and text-only) log-probs are constants: they are detached here, so a reference computed
  without `torch.no_grad()`, or with a LoRA policy's adapters switched off, can never leak a gradient;
- everything is computed in float32: summed log-probs are in the hundreds, where bf16 rounds by ~1 nat,
  more than a typical reward margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

# Same value as the SED label masking (train.data.sed_data.IGNORE_INDEX) and Hugging Face's loss default;
# not imported from there so this module needs nothing but torch.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class PreferenceLoss:
    """A loss to call `.backward()` on, and detached numbers to log.

    Rewards are the implicit DPO rewards β·(log πθ − log πref), averaged over the batch; `margin` is the mean
    of chosen − rejected reward and `accuracy` the fraction of samples whose margin is positive. `terms`
    holds each component loss (detached, for logging); `loss` is their weighted sum.
    """

    loss: Tensor
    chosen_reward: Tensor
    rejected_reward: Tensor
    margin: Tensor
    accuracy: Tensor
    terms: dict[str, Tensor]


def sequence_logps(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Sum over each sequence of log p(label token), shape [B], in float32.

    `labels` is aligned with `input_ids` ([B, T], `ignore_index` on prompt, media and padding positions), so the
    logits at position t score the label at t + 1; the first label and the last logits have no partner.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, T, V] and labels [B, T]; got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    logits, labels = logits[:, :-1], labels[:, 1:]
    scored = labels != ignore_index
    # gather needs a valid index everywhere; 0 stands in at masked positions and the mask zeroes its score.
    token_logps = _token_logps(logits, labels.masked_fill(~scored, 0))
    return (token_logps * scored).sum(dim=-1)


def _token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[label] per position, via logit − logsumexp, one sequence at a time in float32.

    Row by row because a float32 copy of a whole [B, T, V] batch is gigabytes for a 152k-token vocabulary.
    """
    rows = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        row = row_logits.float()
        picked = row.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> PreferenceLoss:
    """Sigmoid DPO, SABER-LLM Eq. 3 (CA-DPO; the reference is the frozen SFT model):

        h    = β·(log πθ(y_w|X) − log πref(y_w|X)) − β·(log πθ(y_l|X) − log πref(y_l|X))
        loss = mean over the batch of −log σ(h)

    All arguments are [B] summed log-probs. Returns terms {"dpo": loss}.
    """
    _check_batch(policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                 ref_rejected=ref_rejected)
    _check_positive("beta", beta)
    chosen_reward = beta * _log_ratio(policy_chosen, ref_chosen)
    rejected_reward = beta * _log_ratio(policy_rejected, ref_rejected)
    # logsigmoid rather than log(sigmoid(.)): sigmoid underflows to 0 for very negative h, and log(0) = −inf.
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return _preference_loss(loss, chosen_reward, rejected_reward, {"dpo": loss})


@dataclass(frozen=True)
class AvemConfig:
    """AVEm-DPO hyper-parameters; defaults are the paper's (Sec. C.3)."""

    beta: float = 0.1  # DPO temperature β
    beta_vr: float = 0.5  # weight of y_vr (real cue, irrelevant to the emotion) among the rejections
    beta_er: float = 0.5  # weight of y_er (typical emotion cue, absent from the clip)
    lambda_av: float = 1.0  # weight of the prompt-based modality preference (PMP) loss
    gamma_tpd: float = 0.2  # strength of text-prior debiasing (TPD)

    def __post_init__(self) -> None:
        _check_positive("beta", self.beta)
        for name in ("beta_vr", "beta_er", "lambda_av", "gamma_tpd"):
            if getattr(self, name) < 0:
                raise ValueError(f"AvemConfig.{name} must be >= 0, got {getattr(self, name)}")
        # The paper requires β_vr + β_er = 1 (Eqs. 6, 10). It is what makes the loss a Bradley-Terry
        # comparison of rewards: each reward carries β·log Z(a, v, x), which cancels only if the rejection
        # weights sum to the chosen response's weight, 1.
        if not math.isclose(self.beta_vr + self.beta_er, 1.0, abs_tol=1e-6):
            raise ValueError(f"AvemConfig.beta_vr + beta_er must be 1, got {self.beta_vr} + {self.beta_er}")


@dataclass(frozen=True)
class AvemInputs:
    """Per-sample [B] summed log-probs for one AVEm-DPO batch.

    Original input (a_w, v_w, x): the chosen response y_w and the two rejections y_vr, y_er, under the policy
    and the reference. Swapped input (a_l^PMP, v_l^PMP, x^m), a clip of a different emotion with the modality
    named by the prompt swapped: the CHOSEN response y_w again, under policy and reference. Text only (x, no
    audio or video) under the reference's language backbone: y_w, y_vr, y_er.
    """

    policy_chosen: Tensor
    policy_vr: Tensor
    policy_er: Tensor
    ref_chosen: Tensor
    ref_vr: Tensor
    ref_er: Tensor
    policy_chosen_swapped: Tensor
    ref_chosen_swapped: Tensor
    text_chosen: Tensor
    text_vr: Tensor
    text_er: Tensor

    def __post_init__(self) -> None:
        _check_batch(**{f.name: getattr(self, f.name) for f in fields(self)})


def avem_loss(inputs: AvemInputs, config: AvemConfig | None = None) -> PreferenceLoss:
    """AVEm-DPO (Eq. 9): loss = L_DPO-TPD^y + λ_av · L_DPO^av-prompt. Writing ρ(y | input) = log πθ − log πref:

    Emotion-based response preference with text-prior debiasing (Eq. 10, i.e. Eq. 6 plus TPD from Eqs. 7-8):
        h_erp = β·(ρ(y_w | a,v,x) − β_vr·ρ(y_vr | a,v,x) − β_er·ρ(y_er | a,v,x))
                − γ_TPD·(log π_text(y_w|x) − β_vr·log π_text(y_vr|x) − β_er·log π_text(y_er|x))
        L_DPO-TPD^y = mean(−log σ(h_erp))

    Prompt-based modality preference (Eq. 5, with u(·) from Eq. 4 read with y_w in both terms: the same
    response is preferred given the true clip over the swapped clip; the paper prints y_l, y_w is meant):
        h_pmp = β·(ρ(y_w | a_w,v_w,x^m) − ρ(y_w | a_l^PMP,v_l^PMP,x^m))
        L_DPO^av-prompt = mean(−log σ(h_pmp))

    Gradients reach all four policy terms, including the swapped-input one. Metrics describe the response
    preference: chosen reward β·ρ(y_w), rejected reward β·(β_vr·ρ(y_vr) + β_er·ρ(y_er)), their margin
    (without the TPD offset, which is constant in training) and its accuracy.
    Returns terms {"erp_tpd": L_DPO-TPD^y, "pmp": L_DPO^av-prompt} (pmp before the λ_av weight).
    """
    config = config or AvemConfig()
    chosen_reward = config.beta * _log_ratio(inputs.policy_chosen, inputs.ref_chosen)
    rejected_reward = config.beta * (config.beta_vr * _log_ratio(inputs.policy_vr, inputs.ref_vr)
                                     + config.beta_er * _log_ratio(inputs.policy_er, inputs.ref_er))
    erp_tpd = -F.logsigmoid(chosen_reward - rejected_reward - config.gamma_tpd * _text_prior_gap(inputs, config))
    swapped_reward = config.beta * _log_ratio(inputs.policy_chosen_swapped, inputs.ref_chosen_swapped)
    pmp = -F.logsigmoid(chosen_reward - swapped_reward)
    erp_tpd, pmp = erp_tpd.mean(), pmp.mean()
    loss = erp_tpd + config.lambda_av * pmp
    return _preference_loss(loss, chosen_reward, rejected_reward, {"erp_tpd": erp_tpd, "pmp": pmp})


def _text_prior_gap(inputs: AvemInputs, config: AvemConfig) -> Tensor:
    """log π_text(y_w|x) − Σ_i β_i log π_text(y_i|x): how much more the text prior alone favours y_w.

    Detached: π_text is the reference's language backbone, only a probe of the text prior (the paper stops
    its gradient). Were it the policy's own backbone, a gradient here would reward making y_w less likely
    from text alone: a shortcut that lowers the loss without grounding anything in the clip.
    """
    text_chosen, text_vr, text_er = (t.detach().float() for t in (inputs.text_chosen, inputs.text_vr, inputs.text_er))
    return text_chosen - config.beta_vr * text_vr - config.beta_er * text_er


def _log_ratio(policy: Tensor, reference: Tensor) -> Tensor:
    """log πθ − log πref in float32; the reference is a constant of the objective, hence detached."""
    return policy.float() - reference.detach().float()


def _preference_loss(loss: Tensor, chosen_reward: Tensor, rejected_reward: Tensor,
                     terms: dict[str, Tensor]) -> PreferenceLoss:
    margin = (chosen_reward - rejected_reward).detach()
    return PreferenceLoss(loss=loss, chosen_reward=chosen_reward.detach().mean(),
                          rejected_reward=rejected_reward.detach().mean(), margin=margin.mean(),
                          accuracy=(margin > 0).float().mean(), terms={k: v.detach() for k, v in terms.items()})


def _check_batch(**tensors: Tensor) -> None:
    """All log-prob tensors must be the same [B] shape; broadcasting [B] against [B, 1] would silently give [B, B]."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or first[0] == 0 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"log-probs must all be non-empty [B] tensors of one shape; got {shapes}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
