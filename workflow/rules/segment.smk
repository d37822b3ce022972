# Stage 4: the final segmentation network, trained on the pseudo labels (and on the GT: the upper bound), its val
# evaluation, and segment.export_split's predictions in the VOC server's format. Declarations: src/wsss/registry.py.

stage_rule("train_seg")
stage_rule("eval_seg")
stage_rule("export_seg")
