"""The bfloat16 training step of issue 15: torch's loss against fastloss's, on this CPU.

    python benchmarks/bf16_step.py [--rows 1024] [--hidden 512] [--classes 50257]
                                   [--repeat 7] [--threads T] [--json FILE]

One step is forward, loss, backward and an SGD step of a bfloat16 ``nn.Linear(hidden,
classes)`` on a batch of ``rows``. The variants differ only in the loss:

- torch: ``F.cross_entropy`` on the bfloat16 logits;
- fastloss: ``fastloss.torch.cross_entropy`` (and with ``inplace_backward=True``, the
  gradient written over the logits' storage);
- fastloss linear: ``fastloss.torch.linear_cross_entropy`` on the bfloat16 hidden states
  and classifier, the N x V logits never formed whole (blocks of rows from the memory
  budget; and in one block of all N rows, whose products are whole ones).

Printed: the CPU and whether it has AMX (whose bfloat16 products make the loss the larger
part of the step), the bfloat16 product ``x @ W.T`` alone, each variant's median step
time with its speed-up over torch's step, and the bound: the same step with the logits'
gradient given instead of computed by a loss (products, bias and SGD only), the fastest
step any loss could give.
"""
import argparse
import json

import torch
import torch.nn.functional as F

import fastloss.torch as ft
from fastloss.bench._run import cpu_model

from _timing import median_ms


def _half_flags():
    """The CPU's AMX, AVX512_BF16 and AVX512_FP16 flags (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    return sorted(flag for flag in set(flags)
                  if flag.startswith(("amx", "avx512_bf16", "avx512_fp16")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--classes", type=int, default=50257)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = torch.nn.Linear(args.hidden, args.classes).to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(args.rows, args.hidden, dtype=torch.bfloat16)
    target = torch.randint(0, args.classes, (args.rows,))
    threads = args.threads or torch.get_num_threads()

    def step(loss_of):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_of().backward()
            opt.step()
        return run

    # the step with a free loss: the logits' gradient is given (made once, outside the
    # timing), so only the products, the bias's add and sum, and SGD remain: no loss,
    # fused or not, can make a step faster than this
    given_grad = torch.randn(args.rows, args.classes, dtype=torch.bfloat16) / args.rows

    def bound_step():
        opt.zero_grad(set_to_none=True)
        model(x).backward(given_grad)
        opt.step()

    variants = {
        "torch F.cross_entropy": lambda: F.cross_entropy(model(x), target),
        "fastloss.torch.cross_entropy": lambda: ft.cross_entropy(
            model(x), target, num_threads=threads),
        "fastloss.torch.cross_entropy, inplace_backward": lambda: ft.cross_entropy(
            model(x), target, inplace_backward=True, num_threads=threads),
        "fastloss.torch.linear_cross_entropy": lambda: ft.linear_cross_entropy(
            x, model.weight, target, linear_bias=model.bias, num_threads=threads),
        "fastloss.torch.linear_cross_entropy, one block": lambda: ft.linear_cross_entropy(
            x, model.weight, target, linear_bias=model.bias, block_rows=args.rows,
            num_threads=threads),
    }
    model_name, flags = cpu_model(), _half_flags()
    weight = model.weight.detach()
    product_ms = median_ms(lambda: x @ weight.T, args.repeat, warmup=2)
    print(f"CPU: {model_name}; flags: {' '.join(flags) or 'no AMX, no AVX512_BF16'}; "
          f"{threads} threads; torch {torch.__version__}")
    print(f"step: Linear {args.hidden} -> {args.classes} in bfloat16, N={args.rows}, SGD; "
          f"medians of {args.repeat}")
    print(f"{'bfloat16 x @ W.T alone':48s} {product_ms:9.1f} ms")
    results = {"cpu": model_name, "flags": flags, "threads": threads,
               "product_ms": product_ms, "steps": {}}
    base = None
    for name, loss_of in variants.items():
        ms = median_ms(step(loss_of), args.repeat, warmup=2)
        base = base or ms
        results["steps"][name] = ms
        print(f"{name:48s} {ms:9.1f} ms  {base / ms:5.2f}x torch's step", flush=True)
    bound_ms = median_ms(bound_step, args.repeat, warmup=2)
    results["bound_ms"] = bound_ms
    print(f"{'bound: no loss (the logits gradient given)':48s} {bound_ms:9.1f} ms  "
          f"{base / bound_ms:5.2f}x torch's step (the most any loss can reach)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
