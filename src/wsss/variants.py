"""The ablation variants of the two methods (name -> the mechanisms it switches on) and which networks a config
trains. Torch-free: the registry, the Snakemake rules, the training objectives and the report all read it."""

# MainNet (pixel-level self-supervision): name -> the mechanisms it adds to the classification loss; "baseline" is
# the fair control, "puzzle" and "hide_and_seek" the positive controls (Puzzle-CAM's puzzle module, Hide-and-Seek:
# published CAM-expansion methods). "authors*": the formulation read from the authors' compiled code (issue 16,
# docs/methods.md): "teacher" = SupportNet as MainNet's exponential moving average (mean teacher) instead of frozen,
# "authors_rcm" / "authors_mam" their RCM and MAM; "authors_frozen" is both with our frozen SupportNet. (The
# teacher alone, with neither loss, trains exactly the baseline: nothing reads it; tests/test_authors.py.)
# Each mechanism is a section of the mainnet config (the keys its stage reads).
MAINNET_VARIANTS = {
    "baseline": (),
    "rcm": ("rcm",),
    "mam": ("mam",),
    "rcm_mam": ("rcm", "mam"),
    "puzzle": ("puzzle",),
    "hide_and_seek": ("hide_and_seek",),
    "authors": ("teacher", "authors_rcm", "authors_mam"),
    "authors_rcm": ("teacher", "authors_rcm"),
    "authors_mam": ("teacher", "authors_mam"),
    "authors_frozen": ("authors_rcm", "authors_mam"),
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


# the AA&LR controlled-noise experiment (issue 16): one label setting per wildcard value, "clean" (the ground truth
# itself) or "<kind><percent>", e.g. "erode20" (wsss.data.label_noise)
NOISE_KINDS = ("dilate", "erode", "body_to_background", "context_bleed")
NOISE_PATTERN = "clean|(?:" + "|".join(NOISE_KINDS) + r")\d+"


def noise_settings(cfg: dict) -> list[str]:
    """The label settings the config's noise experiment trains on (none when it is off)."""
    n = cfg["single_stage"]["noise_experiment"]
    if not (cfg["single_stage"]["enabled"] and n["enabled"]):
        return []
    return (["clean"] if n["clean"] else []) + [f"{k}{round(100 * r)}" for k in n["kinds"] for r in n["rates"]]


def parse_noise(name: str) -> tuple[str, float]:
    """'erode20' -> ('erode', 0.2); 'clean' -> ('clean', 0.0)."""
    if name == "clean":
        return "clean", 0.0
    kind = name.rstrip("0123456789")
    if kind not in NOISE_KINDS or kind == name:
        raise ValueError(f"not a label-noise setting: {name!r} (expected 'clean' or <kind><percent>, e.g. 'erode20')")
    return kind, int(name[len(kind) :]) / 100.0


def noise_variants(cfg: dict) -> list[str]:
    return list(cfg["single_stage"]["noise_experiment"]["variants"]) if noise_settings(cfg) else []


# the held-out choice of the AA weight (issue 16; single_stage.selection): one job per (variant, weight), the weight
# as a wildcard in its shortest decimal form ("0.03", "0.1", "1")
AA_WEIGHT_PATTERN = r"\d+(?:\.\d+)?"


def format_weight(w: float) -> str:
    """0.03 -> '0.03', 1.0 -> '1': the weight's wildcard value (the shortest repr that reads back the same)."""
    text = repr(float(w))
    if "e" in text:
        raise ValueError(f"AA weight {w!r} has no plain decimal form; give it as a decimal such as 0.003")
    return text[:-2] if text.endswith(".0") else text


def selection_weights(cfg: dict) -> list[str]:
    """The AA weights the config's held-out selection trains (none when it is off)."""
    s = cfg["single_stage"]["selection"]
    return [format_weight(w) for w in s["aa_weights"]] if cfg["single_stage"]["enabled"] and s["enabled"] else []


def selection_variants(cfg: dict) -> list[str]:
    return list(cfg["single_stage"]["selection"]["variants"]) if selection_weights(cfg) else []
