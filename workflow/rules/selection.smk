# The held-out choice of the AA weight (issue 16; single_stage.selection): one single-stage job per (variant, AA
# weight), then its mIoU on the calibration subset of cam_split (chosen on) and on val (reported for the pick).
# Declarations: src/wsss/registry.py.

stage_rule("train_select")
stage_rule("eval_select")
