"""Refinement of CAMs into pseudo labels (dense CRF: :mod:`wsss.refine.crf`)."""
