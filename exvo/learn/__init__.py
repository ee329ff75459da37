"""Stage 2: multitask learners over cached embeddings.

``features`` (specs, loading, early fusion, scaler) · ``probe`` (ridge probe for ``@best``) ·
``targets`` (label arrays, the selection score) · ``selection`` (the speaker-disjoint Train
hold-out every learner selects on, or Val †) · ``framework`` (LearnerModule, SeedStack,
train_seeds: all seeds at once with autograd) · ``losses`` (shared loss terms) ·
``multitask`` (the ExVo outputs contract, LossConfig, MultitaskModule) · ``mlp`` (the
Sys-1/Sys-2 MLP module) · ``torch_learner`` (fit/predict/save/load any MultitaskModule) ·
``xgb`` (XGBoost learner) · ``registry`` (name → learner; the CLI's choices) · ``presets``
(default | paper | baseline | fast) · ``threads`` (``--threads`` and its load-aware default) ·
``reference`` (the plain one-seed loop the framework must agree with) · ``runs`` (run
folders) · ``api`` (``learn``, ``predict_run``).
"""

from exvo.callable_module import make_callable

make_callable(__name__)   # exvo.learn(...) is the API function (exvo.api.learn)
