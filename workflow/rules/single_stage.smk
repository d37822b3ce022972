# The second method: AA&LR's single-stage model, one job per ablation variant (baseline, aa, lr, aa_lr), then its
# val evaluation with and without CRF and its masks / PAMR pseudo GT on cam_split. Declarations: src/wsss/registry.py.

stage_rule("train_single_stage")
stage_rule("eval_single_stage")
