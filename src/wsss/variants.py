"""The ablation variants of the two methods (name -> the mechanisms it switches on) and which networks a config
trains. Torch-free: the registry, the Snakemake rules, the training objectives and the report all read it."""

# MainNet (pixel-level self-supervision): name -> the mechanisms it adds to the classification loss; "baseline" is
# the fair control, "puzzle" and "hide_and_seek" the positive controls (Puzzle-CAM's puzzle module, Hide-and-Seek:
# published CAM-expansion methods)
MAINNET_VARIANTS = {
    "baseline": (),
    "rcm": ("rcm",),
    "mam": ("mam",),
    "rcm_mam": ("rcm", "mam"),
    "puzzle": ("puzzle",),
    "hide_and_seek": ("hide_and_seek",),
}

# the single-stage model (AA&LR): name -> (adaptive affinity, label reassign)
SINGLE_STAGE_VARIANTS = {"baseline": (False, False), "aa": (True, False), "lr": (False, True), "aa_lr": (True, True)}


def nets(cfg: dict) -> list[str]:
    """All CAM networks the config trains, SupportNet first."""
    return ["supportnet"] + [f"mainnet_{v}" for v in cfg["mainnet"]["variants"]]


def seg_sources(cfg: dict) -> list[str]:
    if not cfg["segment"]["enabled"]:
        return []
    return ["pseudo"] + (["gt"] if cfg["segment"]["upper_bound"] else [])


def single_stage_variants(cfg: dict) -> list[str]:
    return list(cfg["single_stage"]["variants"]) if cfg["single_stage"]["enabled"] else []
