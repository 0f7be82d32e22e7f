"""Child process of tests/test_memory.py: the peak memory of one training step, measured as the rise of
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs after a warm-up step) over
its resident set before the step. Run with MALLOC_MMAP_THRESHOLD_ set low so that freed tensors go back to
the OS at once (no glibc heap retention), one thread. Prints JSON {"measured": bytes}.

Usage: python memory_peak.py MODEL PIXELS B CHECKPOINTING(0|1)
"""

import json
import sys

import torch

from lssr.losses import per_sample_loss
from lssr.memory import profile, segments_for
from lssr.models import build_model
from lssr.training.forward import checkpointed_forward
from lssr.training.single import chunked_loss_and_grad


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    torch.set_num_threads(1)
    name, px, b, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    torch.manual_seed(0)
    model = build_model(name, 3, 10, True).train()
    x, y = torch.randn(b, 3, px, px), torch.randint(0, 10, (b,))
    segs = segments_for(profile(name, True, 3, px, 10, torch.float32))
    fwd = checkpointed_forward(model, segs) if ckpt else None
    loss, idx = per_sample_loss("ce"), torch.arange(b)
    chunked_loss_and_grad(model, x, y, idx[:2], loss, 2, fwd)  # warm-up: kernels and lazy initialisation
    for p in model.parameters():
        p.grad = None
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    chunked_loss_and_grad(model, x, y, idx, loss, b, fwd)  # the step: whole batch, as a batch-norm model trains
    print(json.dumps({"measured": status("VmHWM") - base}))


if __name__ == "__main__":
    main()
