"""Per-op torch.profiler table of one block of the conditional ResNet-50 (eager, 1 thread, 20 calls on one
image; untrained gates set for r ~ 0.5 as in latency.py).

    python benchmarks/profile_block.py 14      # block index 0-15 (14 = layer4.1)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import batchshaping as bs
from batchshaping.inference import compile_conditional

sys.path.insert(0, str(Path(__file__).parent))
import latency as L  # noqa: E402


def main() -> None:
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 14
    torch.set_num_threads(1)
    model = bs.create_model("gated_resnet50").eval()
    L.calibrate_untrained(model, L.CIFAR_TEST)
    x = L.load_images(L.CIFAR_TEST, 1, 224)
    core = compile_conditional(model, script=False).core
    with torch.inference_mode():
        h = core.stem_forward(x)
        for b in range(index):
            h = core.blocks[b](h, "auto")
        block = core.blocks[index]
        mask, w = block.gate(h)[0], block.width
        print(
            "open conv1", int(mask[:w].sum()), "conv2", int(mask[w:].sum()), "of", w, "input", tuple(h.shape)
        )
        for _ in range(3):
            block(h, "auto")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(20):
                block(h, "auto")
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=28, max_shapes_column_width=70
    )
    print(table)


if __name__ == "__main__":
    main()
