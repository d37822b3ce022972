"""Published PASCAL VOC 2012 numbers of peer methods (mIoU %, as printed by their authors).

Only numbers tagged [READ], [CODE], [DERIVED] or [SECONDARY] in the project's research notes
(``shared/research/papers.md`` §2.4 and §3) are listed. [RECALL-UNVERIFIED] numbers are left out on purpose.
Each number carries its own source string. Source keys: R = official repo README, A = paper abstract,
PwC = paperswithcode page, WZ = wizwand.com leaderboard, G = gyguo/awesome-weakly-supervised-semantic-segmentation
README performance list (image-level supervision, no extra data).

These are real-VOC numbers from other codebases and backbones. Numbers from this project's synthetic
data are not comparable with them. They are listed for context only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

NUMBER_FIELDS = ("cam_train", "pseudo_train", "val", "test")


@dataclass(frozen=True)
class Published:
    method: str
    venue: str
    backbone: str
    seg_net: str
    cam_train: float | None = None  # CAM mIoU on VOC12 train
    pseudo_train: float | None = None  # pseudo-mask mIoU on VOC12 train
    val: float | None = None
    test: float | None = None
    sources: dict[str, str] = field(default_factory=dict)  # number field -> "[TAG] source"
    note: str = ""


_G = "[SECONDARY] G"
_PSA_R = "[READ] R jiwoon-ahn/psa README"

PUBLISHED: tuple[Published, ...] = (
    Published(
        "Pixel-level self-supervision (target paper, arXiv 2112.05351)",
        "arXiv 2021",
        "not published",
        "not published",
        note="no CAM, pseudo-mask, val or test number found in any reachable source",
    ),
    Published(
        "AA&LR (target paper)",
        "ACM MM21",
        "unverified (WR38?)",
        "none (single stage)",
        val=63.9,
        sources={"val": "[DERIVED] GETAM arXiv 2112.02841 sect. 5.3.1: 71.7 - 7.8"},
        note="whether val is with CRF is not stated; test number unverified, not listed",
    ),
    Published(
        "AffinityNet / PSA",
        "CVPR18",
        "ResNet-38",
        "ResNet-38",
        cam_train=48.0,
        pseudo_train=58.1,
        val=61.7,
        test=63.7,
        sources={
            "cam_train": _PSA_R + " (CVPR submission)",
            "pseudo_train": _PSA_R + " (RW, CVPR submission)",
            "val": "[SECONDARY] WZ, G",
            "test": "[SECONDARY] WZ, G",
        },
        note="PyTorch re-implementation per README: CAM 47.7, RW 61.0",
    ),
    Published(
        "IRN",
        "CVPR19",
        "ResNet-50",
        "ResNet-50 DeepLab-v2",
        val=63.5,
        test=64.8,
        sources={"val": "[SECONDARY] PwC, WZ, G", "test": "[SECONDARY] PwC, WZ, G"},
    ),
    Published(
        "SEAM",
        "CVPR20",
        "ResNet-38",
        "ResNet-38 DeepLab",
        cam_train=55.4,
        val=64.5,
        test=65.7,
        sources={"cam_train": "[SECONDARY] PPC abstract (CSDN translation)", "val": _G, "test": _G},
    ),
    Published(
        "1-stage (Araslanov & Roth), no CRF",
        "CVPR20",
        "WideResNet-38",
        "none (single stage)",
        pseudo_train=64.7,
        val=59.7,
        test=62.7,
        sources={k: "[READ] R visinf/1-stage-wseg README" for k in ("pseudo_train", "val", "test")},
    ),
    Published(
        "1-stage (Araslanov & Roth), +CRF",
        "CVPR20",
        "WideResNet-38",
        "none (single stage)",
        pseudo_train=66.9,
        val=62.7,
        test=64.3,
        sources={k: "[READ] R visinf/1-stage-wseg README" for k in ("pseudo_train", "val", "test")},
    ),
    Published(
        "AdvCAM",
        "CVPR21",
        "ResNet-50",
        "ResNet-101 DeepLab-v2",
        pseudo_train=69.9,
        val=68.1,
        test=68.0,
        sources={"pseudo_train": "[SECONDARY] WZ", "val": "[SECONDARY] PwC", "test": "[READ] A"},
    ),
    Published(
        "CONTA (+SEAM)",
        "NeurIPS20",
        "ResNet-38",
        "ResNet-101 DeepLab-v2",
        val=66.1,
        test=66.7,
        sources={"val": _G, "test": _G},
    ),
    Published(
        "RRM (single-stage)",
        "AAAI20",
        "ResNet-38",
        "ResNet-101 DeepLab-v2",
        val=66.3,
        test=66.5,
        sources={"val": _G, "test": _G},
    ),
    Published(
        "SC-CAM (Chang et al.)",
        "CVPR20",
        "ResNet-38",
        "ResNet-101 DeepLab-v2",
        val=66.1,
        test=65.9,
        sources={"val": _G, "test": _G},
    ),
    Published(
        "BES", "ECCV20", "ResNet-50", "ResNet-101 DeepLab-v2", val=65.7, test=66.6, sources={"val": _G, "test": _G}
    ),
    Published("ICD", "CVPR20", "VGG16", "ResNet-101 DeepLab-v1", val=64.1, test=64.3, sources={"val": _G, "test": _G}),
    Published("SSDD (PSA)", "ICCV19", "ResNet-38", "ResNet-38", val=64.9, test=65.5, sources={"val": _G, "test": _G}),
    Published(
        "CPN", "ICCV21", "ResNet-38", "ResNet-38 DeepLab-v1", val=67.8, test=68.5, sources={"val": _G, "test": _G}
    ),
    Published("PMM", "ICCV21", "ResNet-38", "ResNet-38 PSPNet", val=68.5, test=69.0, sources={"val": _G, "test": _G}),
    Published(
        "PPC (+SEAM)",
        "CVPR22",
        "ResNet-38",
        "DeepLab-v1 (+CRF)",
        cam_train=61.5,
        pseudo_train=69.2,
        val=67.7,
        test=67.4,
        sources={k: "[READ] R usr922/wseg README" for k in NUMBER_FIELDS},
        note="pseudo masks via AffinityNet",
    ),
    Published(
        "AFA (single-stage)",
        "CVPR22",
        "MiT-B1",
        "none (single stage)",
        val=66.0,
        test=66.3,
        sources={"val": "[READ] AFA README abstract; G", "test": _G},
    ),
    Published(
        "GETAM (single-stage)",
        "arXiv 2112.02841",
        "ViT-Hybrid",
        "none (single stage)",
        val=71.7,
        test=72.3,
        sources={"val": "[READ] GETAM text (ar5iv)", "test": "[READ] GETAM text (ar5iv)"},
    ),
)


def published_frame() -> pd.DataFrame:
    """One row per method; number columns are in percent (``*_pct``) exactly as published, NaN where unknown."""
    rows = []
    for p in PUBLISHED:
        row = {"method": p.method, "venue": p.venue, "backbone": p.backbone, "seg_net": p.seg_net}
        for f in NUMBER_FIELDS:
            v = getattr(p, f)
            row[f"{f}_pct"] = float("nan") if v is None else float(v)
        row["sources"] = "; ".join(f"{f}: {p.sources[f]}" for f in NUMBER_FIELDS if f in p.sources)
        row["note"] = p.note
        rows.append(row)
    return pd.DataFrame(rows)
