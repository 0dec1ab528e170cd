"""Per-op torch.profiler table of one block of the conditional ResNet-50 (eager, 1 thread, 20 calls on one
image; untrained gates set for r ~ 0.5 as in latency.py).

    python -m benchmarks.probes.profile_block 14      # block index 0-15 (14 = layer4.1)
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

import batchshaping as bs
from batchshaping.inference import compile_conditional
from benchmarks.common import CIFAR_TEST, block_inputs, calibrate_untrained, load_images


def main() -> None:
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 14
    torch.set_num_threads(1)
    model = bs.create_model("gated_resnet50").eval()
    calibrate_untrained(model, CIFAR_TEST)
    x = load_images(CIFAR_TEST, 1, 224)
    core = compile_conditional(model, script=False).core
    h = block_inputs(core, x)[index]
    block = core.blocks[index]
    with torch.inference_mode():
        mask, w = block.gate(h)[0], block.width
        print(
            "open conv1", int(mask[:w].sum()), "conv2", int(mask[w:].sum()), "of", w, "input", tuple(h.shape)
        )
        for _ in range(3):
            block(h)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(20):
                block(h)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=28, max_shapes_column_width=70
    )
    print(table)


if __name__ == "__main__":
    main()
