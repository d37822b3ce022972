# Stage 3: CAMs refined into pseudo labels on train_split, scored on cam_split: the dense CRF (for the nets in
# refine.crf_nets) and the affinity random walk after it (an affinity net per net of refine.random_walk.nets).
# Declarations: src/wsss/registry.py.

stage_rule("crf")
stage_rule("train_affinity")
stage_rule("random_walk")
