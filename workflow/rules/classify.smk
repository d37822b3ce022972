# Stage 1: SupportNet (CAM classifier), then the MainNet variants trained from the frozen SupportNet (RCM / MAM;
# `baseline` is the fair control). Declarations: src/wsss/registry.py.

stage_rule("train_supportnet")
stage_rule("train_mainnet")
