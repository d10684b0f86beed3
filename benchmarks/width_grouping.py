"""Does training different widths together pay? `-m hidden=128,512,1024` with one seed.

The three jobs of the flagship sweep share their batch order (one seed), so the first layers of
the three 784-w-10 models could run as one matrix product of 784 x (128+512+1024) columns, with
the small output layers apart. This script measures that against what the harness does today:
each width trained by its own hand-written step (`mnist_lab.train.stacked`, a stack of one, as a
single run on the CPU trains it), one after the other, on the same batches.

  separate      three StackedLearner steps per batch (today: one job after another)
  concatenated  one step: x @ [W1a;W1b;W1c]^T, ReLU, three output layers, softmax cross-entropy,
                backward and plain SGD, written out here as the prototype of a grouped step

Usage: python benchmarks/width_grouping.py [--widths 128,512,1024] [--batch 32] [--steps 400]
Prints seconds per 55,000-image epoch of all the widths together, median of 5 interleaved repeats,
and the ratio; checks that both give the same parameters after the timed steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mnist_lab.train.learners import AutogradLearner
from mnist_lab.train.stacked import stack

N_TRAIN = 55_000


def _models(widths, seed):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(784, w), nn.ReLU(), nn.Linear(w, 10)) for w in widths]


class Concatenated:
    """One plain-SGD step for one-hidden-layer ReLU MLPs of several widths on the same batch."""

    def __init__(self, models, lr):
        with torch.no_grad():
            self.w1 = torch.cat([m[0].weight for m in models]).clone()
            self.b1 = torch.cat([m[0].bias for m in models]).clone()
            self.out = [(m[2].weight.clone(), m[2].bias.clone()) for m in models]
        self.bounds = torch.tensor([0] + [m[0].out_features for m in models]).cumsum(0).tolist()
        self.lr = lr

    @torch.no_grad()
    def step(self, x, y):
        z = torch.addmm(self.b1, x, self.w1.T)
        h = z.clamp_min(0)
        spans = list(zip(self.bounds[:-1], self.bounds[1:], strict=True))
        logits = torch.stack(
            [torch.addmm(b, h[:, s:e], w.T) for (w, b), (s, e) in zip(self.out, spans, strict=True)]
        )
        probs = logits.softmax(-1)
        g = probs.scatter_add(
            -1, y.expand(len(spans), -1).unsqueeze(-1), torch.full_like(probs[..., :1], -1.0)
        )
        g /= len(y)
        gh = torch.cat([g[i] @ w for i, (w, _) in enumerate(self.out)], dim=1)
        for i, ((w, b), (s, e)) in enumerate(zip(self.out, spans, strict=True)):
            w.addmm_(g[i].T, h[:, s:e], alpha=-self.lr)
            b.add_(g[i].sum(0), alpha=-self.lr)
        gz = torch.ops.aten.threshold_backward(gh, z, 0)  # the ReLU backward the engine uses
        self.w1.addmm_(gz.T, x, alpha=-self.lr)
        self.b1.add_(gz.sum(0), alpha=-self.lr)
        return logits


def separate_learners(models, lr, steps):
    learners = []
    for m in models:
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        learners.append(stack([AutogradLearner(m, opt, [lr] * steps, None, 0.0)]))
    return learners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="128,512,1024")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    print(
        f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, widths {widths}, "
        f"batch {args.batch}, {args.steps} steps x {args.repeats} repeats"
    )
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(N_TRAIN, 784, generator=gen)
    y_all = torch.randint(0, 10, (N_TRAIN,), generator=gen)
    batches = [torch.randint(0, N_TRAIN, (args.batch,), generator=gen) for _ in range(args.steps)]
    lr = 0.01
    separate = separate_learners(_models(widths, 0), lr, args.steps)
    together = Concatenated(_models(widths, 0), lr)

    def run_separate():
        for idx in batches:
            x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
            for learner in separate:
                learner.step(x, y)

    def run_together():
        for idx in batches:
            together.step(x_all.index_select(0, idx), y_all.index_select(0, idx))

    per_epoch = N_TRAIN / args.batch / args.steps
    variants = {"separate (today)": run_separate, "concatenated": run_together}
    times: dict[str, list[float]] = {label: [] for label in variants}
    for fn in variants.values():
        fn()  # warm-up (and the same updates on both sides for the check below)
    # Interleaved repeats: a shared machine's slow spell hits both variants alike.
    for _ in range(args.repeats):
        for label, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    rows = [(label, statistics.median(t) * per_epoch) for label, t in times.items()]
    # Same maths: the same first-layer weights after the same steps.
    first = separate[0].params[0][0]
    drift = (first - together.w1[: widths[0]]).abs().max().item()
    base = rows[0][1]
    print("\n| variant | s per epoch of all widths | speed-up |")
    print("|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {base / seconds:.2f}x |")
    print(f"\nmax |W1 difference| after {(1 + args.repeats) * args.steps} steps: {drift:.2e}")


if __name__ == "__main__":
    main()
