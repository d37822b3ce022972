# AA&LR's controlled-noise experiment (issue 16; single_stage.noise_experiment): train_split's GT masks corrupted in
# known ways, one single-stage job per (noise setting, variant) on those fixed labels, then its val evaluation.
# Declarations: src/wsss/registry.py.

stage_rule("make_noisy_labels")
stage_rule("train_noisy")
stage_rule("eval_noisy")
