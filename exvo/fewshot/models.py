"""Few-shot learners over cached utterance embeddings: g∘f and EIHW's enrolment network g∘f∘g̃.

EIHW (paper 000, §2, Fig. 1) uses CNN14 on log-mels as the emotion encoder g and CNN10 as
the enrolment encoder g̃. Here both encoders are MLPs over the cached utterance embeddings
(stage 1 of exvo), so the architecture is the paper's, the front end is not.

Shapes: ``B`` clips; ``D`` feature dims; ``Z`` embedding dims; ``K`` enrolment clips (2).

* g: ``x (B, D) → z (B, Z)``; f: ``e (B, Z) → emotions (B, 10)`` in (0, 1) (sigmoid);
* g̃ (``enrol=True``): each enrolment clip ``(B, K, D) → (B, K, Z)``, averaged over K to
  z̃ ``(B, Z)``; α̃ = softmax(z̃) over the Z dims; the classifier sees ``e = z + z · α̃``;
* auxiliary heads (EIHW Table 1), each a 2-layer MLP, training only:

  ``h``   speaker classifier on z behind gradient reversal (makes z speaker-agnostic);
  ``h~``  speaker classifier on z̃ (makes z̃ speaker-aware);
  ``f~``  emotion classifier on z̃ behind gradient reversal, trained on the mean label of
          the enrolment clips (removes their emotion from z̃).

The training loss is the mean of the active terms (EIHW: "their losses are simply
averaged"): 1 − CCC for emotions, cross-entropy for speakers. The reversal coefficient λ
arrives in the batch (``lam``, see :func:`reversal_schedule`), so one module serves every epoch.
"""
from __future__ import annotations

import torch
from torch import nn

from exvo.fewshot.registry import HEADS
from exvo.learn.framework import LearnerModule
from exvo.learn.losses import ccc_loss, cross_entropy, grad_reverse

N_EMO = 10


def parse_heads(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"h,h~"`` → ``("h", "h~")`` in the canonical order; unknown names are refused."""
    if text is None:
        return ()
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t and t.strip()]
    bad = [t for t in items if t not in HEADS]
    if bad:
        raise ValueError(f"unknown auxiliary head(s) {bad}; choose from {list(HEADS)} "
                         "(h: adversarial speaker on z; h~: speaker on z~; f~: adversarial emotion on z~)")
    return tuple(h for h in HEADS if h in items)


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class FewShotNet(LearnerModule):
    """g∘f (``enrol=False``) or g∘f∘g̃ (``enrol=True``), with optional auxiliary ``heads``.

    ``n_speakers``: the number of Train speakers the speaker heads classify.
    """

    def __init__(self, dim: int, n_speakers: int, enrol: bool = False, heads: tuple[str, ...] = (),
                 hidden: int = 256, zdim: int = 128, head_hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        heads = parse_heads(heads)
        if not enrol and ("h~" in heads or "f~" in heads):
            raise ValueError(f"heads {[h for h in heads if h != 'h']} sit on the enrolment encoder; use --variant enrol")
        self.enrol, self.heads = bool(enrol), heads
        self.g = nn.Sequential(_mlp(dim, hidden, zdim, dropout), nn.ReLU())
        self.f = _mlp(zdim, head_hidden, N_EMO, dropout)
        if self.enrol:
            self.g_enr = _mlp(dim, hidden, zdim, dropout)
        if "h" in heads:
            self.h = _mlp(zdim, head_hidden, n_speakers, dropout)
        if "h~" in heads:
            self.h_enr = _mlp(zdim, head_hidden, n_speakers, dropout)
        if "f~" in heads:
            self.f_enr = _mlp(zdim, head_hidden, N_EMO, dropout)

    def outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch``: ``x (B, D)``; with enrolment ``enr (B, K, D)``; in training also ``spk (B,)``,
        ``lam (B,)`` (the reversal coefficient, one value repeated) and ``enr_y (B, 10)``."""
        z = self.g(batch["x"])
        out = {}
        if self.enrol:
            zt = self.g_enr(batch["enr"]).mean(1)
            e = z + z * torch.softmax(zt, dim=-1)
        else:
            zt, e = None, z
        out["emo"] = torch.sigmoid(self.f(e))
        if "spk" in batch:                                    # auxiliary outputs: training only
            lam = batch["lam"][0]
            if "h" in self.heads:
                out["h"] = self.h(grad_reverse(z, lam))
            if "h~" in self.heads:
                out["h~"] = self.h_enr(zt)
            if "f~" in self.heads:
                out["f~"] = torch.sigmoid(self.f_enr(grad_reverse(zt, lam)))
        return out

    def loss_terms(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = {"emo": ccc_loss(out["emo"], batch["y"])}
        if "h" in out:
            terms["h"] = cross_entropy(out["h"], batch["spk"])
        if "h~" in out:
            terms["h~"] = cross_entropy(out["h~"], batch["spk"])
        if "f~" in out:
            terms["f~"] = ccc_loss(out["f~"], batch["enr_y"])
        return terms

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(self.loss_terms(out, batch).values())).mean()


def reversal_schedule(epoch: int, hold: int, reach: int) -> float:
    """EIHW's warm-up of the reversal coefficient λ: −1 (no reversal: the gradient passes
    unchanged) up to epoch ``hold``, then linear to +1 (full reversal) at epoch ``reach``
    (EIHW: 10 and 60 of 120 epochs)."""
    if epoch <= hold:
        return -1.0
    if epoch >= reach:
        return 1.0
    return -1.0 + 2.0 * (epoch - hold) / max(reach - hold, 1)
