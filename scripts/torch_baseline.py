#!/usr/bin/env python3
"""PyTorch baseline for BENCHMARKS.md (issue 11): the seed's MLP (784-128-ReLU-10),
Adam lr 1e-3 + backprop, batch 64, MNIST normalised as mep does (0.1307, 0.3081).
Trains until the full 10k test set reaches --target accuracy (checked every
--eval-every steps; evaluation time is excluded) and prints one JSON line with the
training seconds to reach it, the epochs, and the accuracy.

Install: python3 -m venv .torchenv && .torchenv/bin/pip install numpy torch (PyPI).
Run:     .torchenv/bin/python scripts/torch_baseline.py --threads 2
"""
import argparse, gzip, json, os, struct, time

import numpy as np
import torch


def idx(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(d, split):
    pre = "train" if split == "train" else "t10k"
    x = idx(os.path.join(d, f"{pre}-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255.0
    y = idx(os.path.join(d, f"{pre}-labels-idx1-ubyte")).astype(np.int64)
    return torch.from_numpy((x - 0.1307) / 0.3081), torch.from_numpy(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="data/mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--max-epochs", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = load(a.data_dir, "train")
    xte, yte = load(a.data_dir, "test")
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossf = torch.nn.CrossEntropyLoss()
    train_s, steps, acc, reached = 0.0, 0, 0.0, None
    g = torch.Generator().manual_seed(a.seed)
    for epoch in range(a.max_epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), 64):
            t0 = time.perf_counter()
            b = perm[i:i + 64]
            opt.zero_grad(set_to_none=True)
            lossf(model(xtr[b]), ytr[b]).backward()
            opt.step()
            train_s += time.perf_counter() - t0
            steps += 1
            if steps % a.eval_every == 0 or i + 64 >= len(ytr):
                with torch.no_grad():
                    acc = (model(xte).argmax(1) == yte).float().mean().item()
                if acc >= a.target and reached is None:
                    reached = {"seconds_to_target": train_s, "steps": steps, "epochs": steps * 64 / len(ytr), "test_acc": acc}
        if reached:
            break
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "target": a.target,
                      "reached": reached, "final_test_acc": acc, "train_seconds": train_s}))


if __name__ == "__main__":
    main()
