"""The rules' resources: GPU stages launch torchrun when a profile gives them more than one GPU."""

import re

from conftest import BIN, REPO, run


def _dry(*extra) -> str:
    p = run(
        [BIN / "snakemake", "-n", "-p", "--cores", "2", "--configfile", "config/smoke.yaml", "--forceall", *extra],
        cwd=REPO,
    )
    return p.stdout + p.stderr


def _shell(out: str, rule: str) -> str:
    block = out.split(f"rule {rule}:", 1)[1]
    return re.search(r"Shell command: (.*)", block).group(1)


def test_gpu_rules_run_the_plain_cli_by_default_and_declare_resources():
    out = _dry()
    assert _shell(out, "train_supportnet").startswith("wsss train_supportnet ")
    block = out.split("rule train_supportnet:", 1)[1].split("Shell command", 1)[0]
    assert "gpu=0" in block and "mem_mb=8000" in block and "runtime=240" in block
    assert "gpu=" not in out.split("rule eval_cams:", 1)[1].split("Shell command", 1)[0]  # CPU stages ask no GPU


def test_more_than_one_gpu_launches_torchrun_with_one_process_per_gpu():
    out = _dry("--set-resources", "train_supportnet:gpu=4", "extract_cams:gpu=2")
    assert _shell(out, "train_supportnet").startswith(
        "torchrun --standalone --nproc_per_node 4 -m wsss.cli -- train_supportnet --params "
        "results/smoke/params/train_supportnet.json"
    )
    assert _shell(out, "extract_cams").startswith(
        "torchrun --standalone --nproc_per_node 2 -m wsss.cli -- extract_cams"
    )
    assert _shell(out, "train_mainnet").startswith("wsss train_mainnet")  # untouched rules stay on one process
