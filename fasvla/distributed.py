"""Process-group setup shared by the training and evaluation scripts."""

import os

import torch


def cpu_process_group_needed() -> bool:
    """Several processes (torchrun, `accelerate launch --multi_gpu`) and no GPU: Accelerate forms the gloo process
    group only when told `cpu=True`; otherwise every process would believe it is alone."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
