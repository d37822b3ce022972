"""The two methods' training objectives, assembled from the losses (:mod:`wsss.losses`) and models.

:mod:`wsss.methods.mainnet`: MainNet's loss under the frozen SupportNet (RCM, MAM); :mod:`wsss.methods.single_stage`:
the single-stage AA&LR model's loss and its test-time inference.
"""
