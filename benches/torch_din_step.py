"""The same DIN training step in PyTorch, as the same-sitting peer of `bench_models --model din`
on a GPU (FuxiCTR is not on the GPU machine; this is its DIN's arithmetic, written plainly).

The model of bench_models' `din`: item, category and user embeddings of 32 (token 64), the
activation unit over [t, e, t - e, t * e] -> 64 Dice -> 1 (no softmax), the weighted sum of the
history, and a head [t, u, user] -> 200 ReLU -> 80 ReLU -> 1; BCE; Adam on every weight (FuxiCTR's
dense optimiser). Histories are padded to L with a mask, lengths uniform in [L/2, L], batch 1024,
f32. Timed with CUDA events: 3 warm-up steps, then the median of 10.

    python3 benches/torch_din_step.py --len 1000 --len 10000
"""

import argparse
import statistics

import torch
import torch.nn as nn


class Dice(nn.Module):
    def __init__(self, dim, eps=1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        p = torch.sigmoid(self.bn(x))
        return x * (self.alpha + p * (1 - self.alpha))


class Din(nn.Module):
    def __init__(self, items, cates, users, d=32):
        super().__init__()
        self.item = nn.Embedding(items, d, padding_idx=0)
        self.cate = nn.Embedding(cates, d, padding_idx=0)
        self.user = nn.Embedding(users, d)
        w = 2 * d
        self.unit = nn.Sequential(nn.Linear(4 * w, 64), Dice(64), nn.Linear(64, 1))
        self.head = nn.Sequential(
            nn.Linear(2 * w + d, 200), nn.ReLU(), nn.Linear(200, 80), nn.ReLU(), nn.Linear(80, 1)
        )

    def forward(self, user, t_item, t_cate, h_item, h_cate, mask):
        t = torch.cat([self.item(t_item), self.cate(t_cate)], -1)  # [B, w]
        e = torch.cat([self.item(h_item), self.cate(h_cate)], -1)  # [B, L, w]
        tt = t.unsqueeze(1).expand_as(e)
        x = torch.cat([tt, e, tt - e, tt * e], -1)  # [B, L, 4w]
        # Dice's statistics over the real positions only, as ours.
        real = mask.reshape(-1)
        a = torch.zeros(real.shape[0], device=x.device)
        a[real] = self.unit(x.reshape(-1, x.shape[-1])[real]).squeeze(-1)
        a = a.reshape(mask.shape)
        u = (a.unsqueeze(-1) * e).sum(1)
        return self.head(torch.cat([t, u, self.user(user)], -1)).squeeze(-1)


def step_time(L, batch, dev, items=100_002, cates=1_002, users=10_002):
    g = torch.Generator(device="cpu").manual_seed(1)
    model = Din(items, cates, users).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()

    def data():
        lens = torch.randint(L // 2, L + 1, (batch,), generator=g)
        mask = torch.arange(L).unsqueeze(0) < lens.unsqueeze(1)
        h_item = torch.randint(2, items, (batch, L), generator=g) * mask
        h_cate = torch.randint(2, cates, (batch, L), generator=g) * mask
        return [
            t.to(dev)
            for t in (
                torch.randint(2, users, (batch,), generator=g),
                torch.randint(2, items, (batch,), generator=g),
                torch.randint(2, cates, (batch,), generator=g),
                h_item,
                h_cate,
                mask,
                torch.randint(0, 2, (batch,), generator=g).float(),
            )
        ]

    batches = [data() for _ in range(4)]  # rotated: no step reuses the last one's inputs
    times = []
    for i in range(13):
        *x, y = batches[i % len(batches)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(*x), y)
        loss.backward()
        opt.step()
        end.record()
        torch.cuda.synchronize()
        if not torch.isfinite(loss):
            raise SystemExit(f"L={L}: loss {loss.item()}")
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--len", type=int, action="append", default=None)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 arithmetic, as ours
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    print("| model | L | batch | step s (median of 10) | samples/s |")
    print("|---|---|---|---|---|")
    for L in args.len or [1000, 10000]:
        s = step_time(L, args.batch, dev)
        print(f"| torch DIN | {L} | {args.batch} | {s:.4f} | {args.batch / s:.0f} |")


if __name__ == "__main__":
    main()
