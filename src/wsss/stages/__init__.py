"""One module per pipeline stage: thin wrappers that read their input files, call the library and write their
outputs. Each is declared once in :mod:`wsss.registry` (name = module = rule = CLI verb; its files, wildcards and
config keys) and exposes ``run(cfg, *, <its files and wildcards>, threads)``, where ``cfg`` is the stage's config
slice (:class:`wsss.config.ConfigView`). No stage imports another.
"""
