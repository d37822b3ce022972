"""``wsss <stage> --config FILE [paths...]``: one sub-command per pipeline stage.

Snakemake rules (workflow/rules/*.smk) and DVC stages (dvc.yaml, generated from them) call these commands.
Every stage validates the config against the one schema before any work starts.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path

from wsss import config as wconfig
from wsss.io import WsssInputError


def _setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers,
                        force=True)


def _threads(n: int) -> int:
    """Set torch's intra-op threads; ``0`` means every core of the machine (the DVC commands use it)."""
    import torch

    n = n if n > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _p(x: str | None) -> Path | None:
    return Path(x) if x else None


def cmd_make_data(a, cfg):
    from wsss.stages import make_data

    make_data.run(cfg, out_root=Path(a.out), metrics_out=Path(a.metrics))


def cmd_download(a, cfg):
    from wsss.stages import prepare_data

    prepare_data.run_download(cfg, archive=a.archive, out_dir=Path(a.out))


def cmd_prepare_voc(a, cfg):
    from wsss.stages import prepare_data

    prepare_data.run_prepare(cfg, voc_root=Path(a.voc), sbd_root=_p(a.sbd), out_root=Path(a.out),
                             metrics_out=Path(a.metrics))


def cmd_train_cam(a, cfg):
    from wsss.stages import train_cam

    train_cam.run(cfg, net_name=a.net, data_root=Path(a.data), out=Path(a.out), metrics_out=Path(a.metrics),
                  plot_out=Path(a.plot), state_path=Path(a.state), support_ckpt=_p(a.support))


def cmd_extract_cams(a, cfg):
    from wsss.stages import extract_cams

    extract_cams.run(cfg, checkpoint=Path(a.checkpoint), data_root=Path(a.data), split=a.split, out_dir=Path(a.out))


def cmd_eval_cams(a, cfg):
    from wsss.stages import eval_cams

    eval_cams.run(cfg, net_name=a.net, cams_dir=Path(a.cams), data_root=Path(a.data), split=a.split, out=Path(a.out),
                  curve_out=Path(a.curve))


def cmd_crf(a, cfg):
    from wsss.stages import refine_crf

    refine_crf.run(cfg, net_name=a.net, cams_dir=Path(a.cams), data_root=Path(a.data), split=a.split,
                   eval_split=a.eval_split, out_dir=Path(a.out), metrics_out=Path(a.metrics), threads=a.threads,
                   cam_metrics=_p(a.cam_metrics))


def cmd_train_affinity(a, cfg):
    from wsss.stages import train_affinity

    train_affinity.run(cfg, net_name=a.net, data_root=Path(a.data), labels=Path(a.labels), cams_dir=_p(a.cams),
                       out=Path(a.out), metrics_out=Path(a.metrics), plot_out=Path(a.plot), state_path=Path(a.state),
                       support_ckpt=_p(a.support))


def cmd_random_walk(a, cfg):
    from wsss.stages import refine_rw

    refine_rw.run(cfg, net_name=a.net, checkpoint=Path(a.checkpoint), cams_dir=Path(a.cams), data_root=Path(a.data),
                  split=a.split, eval_split=a.eval_split, out_dir=Path(a.out), metrics_out=Path(a.metrics))


def cmd_train_seg(a, cfg):
    from wsss.stages import train_seg

    train_seg.run(cfg, source=a.source, data_root=Path(a.data), label_dir=_p(a.labels), out=Path(a.out),
                  metrics_out=Path(a.metrics), plot_out=Path(a.plot), state_path=Path(a.state),
                  support_ckpt=_p(a.support))


def cmd_eval_seg(a, cfg):
    from wsss.stages import eval_seg

    eval_seg.run(cfg, source=a.source, checkpoint=Path(a.checkpoint), data_root=Path(a.data), split=a.split,
                 out=Path(a.out), pred_dir=Path(a.pred_dir), threads=a.threads)


def cmd_train_single_stage(a, cfg):
    from wsss.stages import train_single_stage

    train_single_stage.run(cfg, variant=a.variant, data_root=Path(a.data), out=Path(a.out), metrics_out=Path(a.metrics),
                           plot_out=Path(a.plot), state_path=Path(a.state), support_ckpt=_p(a.support))


def cmd_eval_single_stage(a, cfg):
    from wsss.stages import infer_single_stage

    infer_single_stage.run(cfg, variant=a.variant, checkpoint=Path(a.checkpoint), data_root=Path(a.data),
                           split=a.split, cam_split=a.cam_split, out=Path(a.out), pred_dir=Path(a.pred_dir),
                           threads=a.threads)


def cmd_export_seg(a, cfg):
    from wsss.stages import export_seg

    export_seg.run(cfg, checkpoint=Path(a.checkpoint), data_root=Path(a.data), split=a.split, out=Path(a.out),
                   metrics_out=Path(a.metrics), threads=a.threads)


def cmd_report(a, cfg):
    from wsss.stages import report

    report.run(cfg, exp_dir=Path(a.exp), out_dir=Path(a.out))


def cmd_validate(a, cfg):
    print(f"{a.config}: valid")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsss", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)

    def stage(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="YAML config (validated against the schema)")
        s.add_argument("--log", help="append the stage's log to this file")
        s.add_argument("--threads", type=int, default=int(os.environ.get("WSSS_THREADS", "1")),
                       help="CPU threads / worker processes (Snakemake passes {threads}; 0 = all cores)")
        s.add_argument("--seed", type=int, default=None,
                       help="the run's seed, one of the config's `seeds` (Snakemake passes {wildcards.seed}); "
                            "default: the first of `seeds`")
        s.set_defaults(func=fn)
        return s

    s = stage("validate", cmd_validate, "validate a config file and exit")
    s = stage("make-data", cmd_make_data, "generate the embedded synthetic VOC benchmark")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s = stage("download", cmd_download, "fetch (resume, mirrors, checksum) and extract a VOC/SBD archive")
    s.add_argument("--archive", required=True, choices=["voc2012_trainval", "sbd"])
    s.add_argument("--out", required=True, help="folder the archive is extracted into")
    s = stage("prepare-voc", cmd_prepare_voc, "splits, XML labels and SBD masks in the VOC layout")
    s.add_argument("--voc", required=True, help="extracted VOCdevkit/VOC2012 (or a folder above it)")
    s.add_argument("--sbd", help="extracted SBD benchmark_RELEASE (voc_sbd)")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s = stage("train-cam", cmd_train_cam, "train SupportNet or a MainNet variant")
    s.add_argument("--net", required=True, help="supportnet | mainnet_<variant>")
    s.add_argument("--data", required=True)
    s.add_argument("--support", help="SupportNet checkpoint (MainNet only)")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--plot", required=True, help="loss curve JSON (a DVC plot)")
    s.add_argument("--state", required=True, help="resumable state file (kept outside the outputs)")
    s = stage("extract-cams", cmd_extract_cams, "multi-scale + flip CAMs, one .npz per image")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--out", required=True)
    s = stage("eval-cams", cmd_eval_cams, "CAM mIoU with a background-threshold sweep")
    s.add_argument("--net", required=True)
    s.add_argument("--cams", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--curve", required=True, help="threshold curve JSON (a DVC plot)")
    s = stage("crf", cmd_crf, "dense-CRF pseudo labels and their mIoU")
    s.add_argument("--net", required=True)
    s.add_argument("--cams", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True, help="images to label (the segmentation training split)")
    s.add_argument("--eval-split", required=True, help="images whose GT scores the pseudo labels (cam_split)")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--cam-metrics", help="the net's eval_cams JSON (refine.calibrate_background)")
    s = stage("train-affinity", cmd_train_affinity, "train the affinity network on confident pseudo labels")
    s.add_argument("--net", required=True, help="the CAM network whose labels it learns from")
    s.add_argument("--data", required=True)
    s.add_argument("--labels", required=True,
                   help="label folder: the net's CRF pseudo labels (label_source crf), or where the confident CAM "
                        "labels are written (label_source cams)")
    s.add_argument("--cams", help="the net's CAM folder (label_source cams)")
    s.add_argument("--support", help="SupportNet checkpoint (backbone initialisation)")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--plot", required=True, help="loss curve JSON (a DVC plot)")
    s.add_argument("--state", required=True)
    s = stage("random-walk", cmd_random_walk, "random-walk pseudo labels over learned affinities, and their mIoU")
    s.add_argument("--net", required=True)
    s.add_argument("--checkpoint", required=True, help="the affinity network")
    s.add_argument("--cams", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--eval-split", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s = stage("train-seg", cmd_train_seg, "train DeepLab on pseudo labels or GT")
    s.add_argument("--source", required=True, choices=["pseudo", "gt"])
    s.add_argument("--data", required=True)
    s.add_argument("--labels", help="pseudo-label folder (source=pseudo)")
    s.add_argument("--support", help="SupportNet checkpoint (backbone initialisation)")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--plot", required=True, help="loss curve JSON (a DVC plot)")
    s.add_argument("--state", required=True)
    s = stage("eval-seg", cmd_eval_seg, "val mIoU with and without CRF")
    s.add_argument("--source", required=True, choices=["pseudo", "gt"])
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--pred-dir", required=True)
    s = stage("train-single-stage", cmd_train_single_stage, "train a single-stage (AA&LR) variant end to end")
    s.add_argument("--variant", required=True, choices=["baseline", "aa", "lr", "aa_lr"])
    s.add_argument("--data", required=True)
    s.add_argument("--support", help="SupportNet checkpoint (single_stage.init_from_supportnet)")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--plot", required=True, help="loss curve JSON (a DVC plot)")
    s.add_argument("--state", required=True)
    s = stage("eval-single-stage", cmd_eval_single_stage,
              "single-stage val mIoU with and without CRF, and its mask / pseudo-GT mIoU on cam_split")
    s.add_argument("--variant", required=True, choices=["baseline", "aa", "lr", "aa_lr"])
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--cam-split", help="split whose GT scores the model's masks (single_stage.pseudo_eval)")
    s.add_argument("--out", required=True)
    s.add_argument("--pred-dir", required=True)
    s = stage("export-seg", cmd_export_seg, "predictions of a split packed in the VOC evaluation server's format")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--out", required=True, help="the .tar.gz to upload")
    s.add_argument("--metrics", required=True)
    s = stage("report", cmd_report, "regenerate tables, figures and the HTML report from the metric files")
    s.add_argument("--exp", required=True, help="results/<name>")
    s.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log)
    log = logging.getLogger("wsss")
    try:
        cfg = wconfig.load(args.config)
        cfg["seed"] = wconfig.run_seed(cfg, args.seed, source=args.config)
        args.threads = _threads(args.threads)
        from wsss.engine import distributed

        distributed.init()  # under torchrun: join the process group (a no-op for one process)
        t0 = time.time()
        args.func(args, cfg)
        log.info("wsss %s done in %.1f s", args.stage, time.time() - t0)
        return 0
    except WsssInputError as e:
        log.error("%s", e)
        print(f"wsss {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = e.filename or "the output folder"
        msg = (f"{where}: no space left on device; nothing was written there (partial output removed). "
               "Free space on that disk and re-run the stage")
        log.error("%s", msg)
        print(f"wsss {args.stage}: error: {msg}", file=sys.stderr)
        return 28
    finally:
        if "torch.distributed" in sys.modules:
            from wsss.engine import distributed

            distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
