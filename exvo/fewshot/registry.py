"""Names of the few-shot variants and options (no torch import, so the CLI can list them cheaply)."""
from __future__ import annotations

VARIANTS = {
    "none": "g∘f: emotion encoder + classifier, no personalisation",
    "finetune": "g∘f, then per speaker a copy fine-tuned on its support clips (official baseline's idea)",
    "enrol": "EIHW g∘f∘g̃: enrolment encoder on 2 same-speaker clips, e = z + z·softmax(z̃)",
    "znorm": "speaker normalisation by the support clips (features centred, or prediction shift)",
}
HEADS = {
    "h": "speaker classifier on z behind gradient reversal",
    "h~": "speaker classifier on the enrolment embedding z~",
    "f~": "emotion classifier on z~ behind gradient reversal",
}
ZNORM_MODES = ("features", "residual")
FT_LOSSES = ("mse", "ccc")
FT_PARAMS = {"all": "every weight (the official baseline)", "head": "the classifier f only",
             "bias": "the output bias of f only (a per-speaker shift of the logits)"}
