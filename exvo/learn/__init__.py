"""Stage 2: multitask learners over cached embeddings.

``features`` (specs, loading, early fusion, scaler) · ``probe`` (ridge probe for ``@best``) ·
``targets`` (label tensors, the early-stopping score) · ``mlp`` (vectorised-seed multitask MLP) ·
``reference`` (the plain one-seed loop it must agree with) · ``xgb`` (XGBoost learner) ·
``runs`` (run folders) · ``api`` (``learn``, ``predict_run``).
"""
