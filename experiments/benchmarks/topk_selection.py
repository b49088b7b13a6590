"""Top-k selection cost: DGC's sampled threshold against exact torch.topk, and the sparse codec's throughput.

Random float32 gradients of 1M and 11M entries at 99.9 % sparsity (the paper's final sparsity). Each
time is the median of --repeats runs after warm-up. Selection is also reported in "passes over
memory": its time divided by that of x.abs().sum(), one read of the gradient.

    python -m experiments.benchmarks.topk_selection [--device cuda|cpu] [--repeats N] [--threads N]

On a CPU shared with other work, --threads 1 gives steadier numbers: a multi-threaded kernel waits
for its slowest thread, and a descheduled thread costs a whole scheduler slice.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from flwr_privacy.algorithms.dgc import kept_count
from flwr_privacy.compression import SparseCodec, payload_nbytes, select_sampled_threshold, select_topk

SIZES = (1_000_000, 11_000_000)
SPARSITY = 0.999
WARMUP_RUNS = 2


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of fn over repeats runs, after warm-up, synchronizing CUDA around each run."""
    for _ in range(WARMUP_RUNS):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(numel: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Times of one memory pass, exact top-k, sampled top-k and codec encode+decode for one size."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel)).to(device)
    k = kept_count(numel, SPARSITY)
    generator = torch.Generator(device=device).manual_seed(0)
    codec = SparseCodec(numel=numel)
    indices, values = select_topk(x, k)
    sampled_indices, _ = select_sampled_threshold(x, k, generator=generator)

    def round_trip() -> None:
        codec.decode(codec.encode(indices, values))

    return {
        "numel": numel,
        "k": k,
        "same_set": set(indices.tolist()) == set(sampled_indices.tolist()),
        "payload_bytes": payload_nbytes(codec.encode(indices, values)),
        "pass": median_seconds(lambda: x.abs().sum(), device, repeats),
        "topk": median_seconds(lambda: select_topk(x, k), device, repeats),
        "sampled": median_seconds(lambda: select_sampled_threshold(x, k, generator=generator), device, repeats),
        "codec": median_seconds(round_trip, device, repeats),
    }


def print_table(rows: list[dict[str, float]]) -> None:
    """One line per size: selection times, their ratio, cost in memory passes, codec throughput."""
    print(
        f"{'numel':>10} {'k':>6} {'pass ms':>8} {'topk ms':>8} {'sampled ms':>10} {'sampled/topk':>12}"
        f" {'topk passes':>11} {'sampled passes':>14} {'same set':>8} {'payload B':>9}"
        f" {'codec ms':>8} {'codec dense MB/s':>16} {'codec Mentries/s':>16}"
    )
    for r in rows:
        print(
            f"{r['numel']:>10} {r['k']:>6} {r['pass'] * 1e3:>8.2f} {r['topk'] * 1e3:>8.2f}"
            f" {r['sampled'] * 1e3:>10.2f} {r['sampled'] / r['topk']:>12.2f}"
            f" {r['topk'] / r['pass']:>11.1f} {r['sampled'] / r['pass']:>14.1f} {str(r['same_set']):>8}"
            f" {r['payload_bytes']:>9} {r['codec'] * 1e3:>8.3f} {r['numel'] * 4 / r['codec'] / 1e6:>16.0f}"
            f" {r['k'] / r['codec'] / 1e6:>16.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: its own)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} is invalid: must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads={args.threads} is invalid: must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; sparsity {SPARSITY}; median of {args.repeats}")
    # The codec runs on the host: on CUDA its time includes copying the k selected entries off the device.
    print_table([measure(numel, device, args.repeats) for numel in SIZES])


if __name__ == "__main__":
    main()
