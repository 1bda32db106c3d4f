"""torch.topk on the inputs `bench_kernels --dump DIR` wrote (scores_<rows>x<L>.f32), timed with
CUDA events, for the same table as ours: ms per call and GB/s of the byte floor (scores read
once, k indices written). Run on the GPU machine: python3 benches/torch_topk.py DIR"""
import pathlib
import sys

import numpy as np
import torch


def main(folder: str, reps: int = 5) -> None:
    print("| op | shape | ms per call | GB/s (byte floor) |")
    print("|---|---|---|---|")
    for path in sorted(pathlib.Path(folder).glob("scores_*.f32")):
        rows, length = map(int, path.stem.split("_")[1].split("x"))
        x = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(rows, length)).cuda()
        for k in (64, 1024):
            torch.topk(x, k, dim=1)  # warm-up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.topk(x, k, dim=1)
            end.record()
            torch.cuda.synchronize()
            secs = start.elapsed_time(end) / 1e3 / reps
            floor = rows * length * 4 + rows * k * 8
            print(f"| torch.topk | {rows}×{length}, k={k} | {secs * 1e3:.3f} | {floor / secs / 1e9:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
