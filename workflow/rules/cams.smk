# Stage 2: multi-scale + flip CAMs of every network on train_split (which holds cam_split), and their quality on
# cam_split against the ground truth (threshold sweep). Declarations: src/wsss/registry.py.

stage_rule("extract_cams")
stage_rule("eval_cams")
