"""Train a small language model on CPU with three loss paths, and compare them.

The text is one every machine with Python has: the source of Python's own standard
library (the .py files under ``sysconfig.get_paths()["stdlib"]``, without the
third-party site-packages and the standard library's own test suites, in sorted
order). It is split into words, numbers, line ends and single punctuation marks; the
V - 1 most frequent become the vocabulary and every other word becomes ``<unk>``.
Nothing is downloaded.

The model is a small causal transformer: a token and a position embedding, a few
pre-norm blocks (causal self-attention and an MLP), a final layer norm giving the
hidden states (N, H) of the N = batch x context positions of a step, and a classifier
(V, H) tied to the token embedding, as in GPT-2. The classifier's product and the
cross-entropy are the part the loss paths compute, each its own way:

    torch              F.linear + F.cross_entropy (the N x V logits, and torch's
                       log-softmax of them, live from the forward to the backward)
    torch-lce          torch's F.linear_cross_entropy (its default, unchunked path)
    torch-lce-chunked  F.linear_cross_entropy with LinearCrossEntropyOptions() (chunked
                       over rows: less memory, more time); not run unless asked for
    fastloss           fastloss.torch.linear_cross_entropy (the logits never exist)

Every path trains from the same seed (the same initial weights) on the same batches
with AdamW for a fixed number of steps, each in a fresh interpreter of its own, so
each path's peak memory is measured alone (see ``ResidentMemory``). The script prints,
per path, the tokens trained per second and the peak resident memory, then the loss
curves side by side, and exits with status 1 unless every curve agrees with the first
path's within --rtol at every step and the loss decreased.

    python examples/train_lm.py                    # the default run
    python examples/train_lm.py --quick            # a few seconds, for CI
    python examples/train_lm.py --paths torch fastloss --steps 100 --threads 2

The default run (20 steps of 8 x 64 tokens, V = 32000) is sized to finish within two
minutes on two idle cores: measured 2026-11-27 on the 2-core machine of BENCHMARKS.md
under a load average of 9 to 13, the whole run took 125 s of CPU time in all its
processes (about 2 s per step and path; 910 s of wall time, the cores being mostly
other sessions'), that is about a minute of wall time where both cores are its own.
The run prints its CPU time beside its wall time for that reason. The table "where a
step's time goes" splits each step into the model's forward, the loss's forward, the
loss's backward (up to the hidden states' gradient), the model's backward and the
optimizer; fastloss computes the loss's gradients in its forward, so its backward is
near zero. The fastloss path runs torch's products and fastloss's kernels in one
thread pool: when its products went through NumPy's OpenBLAS instead, OpenBLAS's
threads and torch's spun against each other on the two cores, and that path alone took
minutes.

How close the curves are: the paths compute the same function in float32, but not
with the same roundings (the order of the sums in the products and in the softmax
differs), so their losses may differ in the last bits at any step, and training, which
feeds each step's weights to the next, carries those differences on. In a stable run
they stay at float32's roundoff: over 30 steps of 8 x 128 tokens (measured 2026-11-26)
the largest relative difference from the torch path's curve was 0 for torch-lce (the
same computation, bit for bit), 1.6e-7 for fastloss and 6.0e-7 for torch-lce-chunked
(float32's unit roundoff is 6e-8). An unstable run amplifies them: with AdamW at
lr 3e-3 and no clipping, whose loss spiked at step 12, the chunked path's difference
grew to 1.9e-4 by step 15. --rtol's default, 1e-4, is about 170 times the largest
difference measured in the stable run, which leaves room for longer runs and other BLAS
builds. What the curves check is the loss at every step and, through the training, the
gradient's direction; AdamW is nearly blind to a gradient's overall scale, which
fastloss's own tests check against torch's directly.
"""
import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

PATHS = ("torch", "torch-lce", "torch-lce-chunked", "fastloss")
# the parts of a training step, timed apart: the model's forward to the hidden states,
# the loss's forward (classifier and cross-entropy), the loss's backward (to the hidden
# states' gradient), the model's backward, and gradient clipping with AdamW's update
PHASES = ("model fwd", "loss fwd", "loss bwd", "model bwd", "optimizer")
DEFAULT_PATHS = ("torch", "torch-lce", "fastloss")

# words (identifiers, keywords), numbers, line ends, and single punctuation marks
TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|\n|[^\sA-Za-z0-9_]")
UNKNOWN = "<unk>"
# not the standard library's own text: installed third-party packages, and its tests
SKIPPED_DIRECTORIES = {"site-packages", "dist-packages", "__pycache__", "test", "tests",
                       "idle_test"}


# ---------------------------------------------------------------------------------------
# The corpus


def stdlib_files():
    """The standard library's .py files, in sorted (deterministic) order."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in SKIPPED_DIRECTORIES)
        found.extend(os.path.join(directory, name) for name in sorted(files)
                     if name.endswith(".py"))
    return root, found


def build_corpus(vocab):
    """The token ids of the whole corpus (int64), the vocabulary, and a description.

    Id 0 is ``<unk>``; ids 1 .. vocab - 1 are the most frequent tokens, the most
    frequent first (ties in the order the tokens first appear)."""
    root, files = stdlib_files()
    tokens, characters = [], 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        characters += len(text)
        tokens.extend(TOKEN.findall(text))
    counts = collections.Counter(tokens)
    words = [UNKNOWN] + [word for word, _ in counts.most_common(vocab - 1)]
    index = {word: i for i, word in enumerate(words)}
    ids = np.fromiter((index.get(token, 0) for token in tokens), dtype=np.int64,
                      count=len(tokens))
    unknown = float(np.mean(ids == 0)) if len(ids) else 0.0
    description = (f"{len(files)} files of the Python {sys.version_info[0]}."
                   f"{sys.version_info[1]} standard library ({root}), "
                   f"{characters / 1e6:.1f} M characters, {len(ids):,} tokens, "
                   f"{len(counts):,} distinct; vocabulary {len(words):,} "
                   f"({UNKNOWN} is {100 * unknown:.2f}% of the tokens)")
    return ids, words, description


def batch_of(ids, step, batch, context, seed):
    """Step `step`'s inputs and next-token targets, (batch, context) each: the same
    whatever the path, since they depend on the seed and the step alone."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(ids) - context - 1, size=batch)
    positions = starts[:, None] + np.arange(context)
    return ids[positions], ids[positions + 1]


# ---------------------------------------------------------------------------------------
# The model and the loss paths (run in the child processes)


def make_model(vocab, hidden, context, layers, heads):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Block(nn.Module):
        """Pre-norm causal self-attention, then a pre-norm MLP, each added back."""

        def __init__(self):
            super().__init__()
            self.attention_norm = nn.LayerNorm(hidden)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.attention_out = nn.Linear(hidden, hidden)
            self.mlp_norm = nn.LayerNorm(hidden)
            self.mlp_in = nn.Linear(hidden, 4 * hidden)
            self.mlp_out = nn.Linear(4 * hidden, hidden)

        def forward(self, x):
            batch, length, _ = x.shape
            q, k, v = (part.view(batch, length, heads, hidden // heads).transpose(1, 2)
                       for part in self.qkv(self.attention_norm(x)).chunk(3, dim=-1))
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attention_out(attended.transpose(1, 2).reshape(batch, length, hidden))
            return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x))))

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(vocab, hidden)
            self.position_embedding = nn.Embedding(context, hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.final_norm = nn.LayerNorm(hidden)
            # N(0, 1) embeddings (nn.Embedding's default) would make the tied classifier's
            # first logits of size sqrt(H); GPT-2's 0.02 starts near the uniform loss log V
            for embedding in (self.token_embedding, self.position_embedding):
                nn.init.normal_(embedding.weight, std=0.02)

        @property
        def classifier(self):
            """The (V, H) classifier, tied to the token embedding."""
            return self.token_embedding.weight

        def forward(self, tokens):
            """The hidden states, (batch * context, H): one row per position."""
            positions = torch.arange(tokens.shape[1])
            x = self.token_embedding(tokens) + self.position_embedding(positions)
            for block in self.blocks:
                x = block(x)
            return self.final_norm(x).reshape(-1, hidden)

    return TinyLM()


def loss_function(path):
    """loss(hidden (N, H), classifier (V, H), target (N,)) -> the mean cross-entropy."""
    import torch.nn.functional as F

    if path == "torch":
        return lambda hidden, classifier, target: F.cross_entropy(
            F.linear(hidden, classifier), target)
    if path == "torch-lce":
        return F.linear_cross_entropy
    if path == "torch-lce-chunked":
        from torch.nn import LinearCrossEntropyOptions

        options = LinearCrossEntropyOptions()
        return lambda hidden, classifier, target: F.linear_cross_entropy(
            hidden, classifier, target, options=options)
    if path == "fastloss":
        import fastloss.torch

        # the signature of F.linear_cross_entropy (input, linear_weight, target, ...)
        return fastloss.torch.linear_cross_entropy
    raise ValueError(f"path: expected one of {PATHS}, got {path!r}")


class ResidentMemory:
    """Peak resident memory of this process, in bytes.

    On Linux, writing "5" to /proc/self/clear_refs resets the peak (VmHWM) to the
    present resident size (VmRSS), so the peak of one step is VmHWM after it less VmRSS
    before it: every page any layer (torch, its allocator, fastloss, the BLAS) touched
    during the step, freed or not. Elsewhere, only the whole process's peak is known
    (getrusage's ru_maxrss), and no per-step figure is given."""

    def __init__(self):
        self.resettable = False
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.resettable = True
        except OSError:
            pass

    @staticmethod
    def _status(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024          # kB
        raise RuntimeError(f"/proc/self/status has no {field}")

    def reset(self):
        """The resident size now; with clear_refs, also the start of a new peak."""
        if self.resettable:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return self._status("VmRSS")
        return self.peak()

    def peak(self):
        if self.resettable:
            return self._status("VmHWM")
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024   # bytes on macOS, else kB


def train(args, path, tokens_file):
    """Train with one loss path; returns its losses, times and memory (a dict)."""
    import torch

    torch.set_num_threads(args.threads)
    if path == "fastloss":
        import fastloss

        fastloss.set_num_threads(args.threads)
    loss_of = loss_function(path)
    ids = np.load(tokens_file)
    batches = [batch_of(ids, step, args.batch, args.context, args.seed)
               for step in range(args.steps)]
    batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
    del ids

    torch.manual_seed(args.seed)
    model = make_model(args.vocab, args.hidden, args.context, args.layers, args.heads)
    # a language model's usual settings (GPT-2's betas, gradients clipped at norm 1): a
    # stable run, in which two paths' rounding differences stay at float32's roundoff
    # instead of growing from step to step (see the module's docstring)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.0)

    memory = ResidentMemory()
    start_resident = memory.reset()
    losses, seconds, cpu_seconds, step_peaks, run_peak = [], [], [], [], 0
    phases = {name: [] for name in PHASES}
    for inputs, target in batches:
        before = memory.reset()
        marks = []
        started, cpu_started = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=False)
        hidden = model(inputs)
        marks.append(time.perf_counter())
        loss = loss_of(hidden, model.classifier, target.reshape(-1))
        marks.append(time.perf_counter())
        # the hidden states' gradient is complete when the loss's own backward is done
        # and the model's begins: where the step's backward splits
        hidden.register_hook(lambda grad: marks.append(time.perf_counter()))
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        marks.append(time.perf_counter())
        seconds.append(marks[-1] - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        for name, first, last in zip(PHASES, [started] + marks, marks):
            phases[name].append(last - first)
        peak = memory.peak()
        step_peaks.append(peak - before if memory.resettable else None)
        run_peak = max(run_peak, peak - start_resident)
    return {"path": path, "losses": losses, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "phases": phases, "step_peaks": step_peaks, "run_peak": run_peak,
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------
# The driver


def run_path(args, path, tokens_file):
    """One path's training in a fresh interpreter (its peak memory its own)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", path,
               "--tokens-file", tokens_file]
    for name in ("steps", "batch", "context", "hidden", "layers", "heads", "vocab", "lr",
                 "threads", "seed"):
        command += ["--" + name, str(getattr(args, name))]
    # the BLAS and OpenMP pools of every library, sized as torch's
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the {path} path failed (exit {done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(count):
    return f"{count / 2**20:,.0f} MiB"


def report(args, results):
    tokens_per_step = args.batch * args.context
    # the first step is left out of the speed: it allocates AdamW's state, the gradients
    # and the thread pools once
    timed = slice(1, None) if args.steps > 1 else slice(None)
    print(f"{'path':<18} {'tokens/s':>10} {'s/step':>8} {'CPU s/step':>10}  "
          f"{'peak RSS growth':>15}  {'largest step peak':>17}")
    for result in results:
        seconds = result["seconds"][timed]
        peaks = [peak for peak in result["step_peaks"][timed] if peak is not None]
        step_peak = mib(max(peaks)) if peaks else "n/a"
        cpu = float(np.median(result["cpu_seconds"][timed])) if "cpu_seconds" in result \
            else float("nan")
        print(f"{result['path']:<18} {tokens_per_step * len(seconds) / sum(seconds):>10,.0f} "
              f"{float(np.median(seconds)):>8.3f} {cpu:>10.3f}  "
              f"{mib(result['run_peak']):>15}  {step_peak:>17}")
    if all("phases" in result for result in results):
        print()
        print("where a step's time goes (median ms)")
        print(f"{'path':<18} " + " ".join(f"{name:>10}" for name in PHASES))
        for result in results:
            print(f"{result['path']:<18} " + " ".join(
                f"{1000 * float(np.median(result['phases'][name][timed])):>10.0f}"
                for name in PHASES))

    print()
    names = [result["path"] for result in results]
    print("loss curves")
    print(f"{'step':>5} " + " ".join(f"{name:>17}" for name in names))
    every = max(1, args.steps // 20)
    for step in range(args.steps):
        if step % every == 0 or step == args.steps - 1:
            print(f"{step + 1:>5} " + " ".join(f"{result['losses'][step]:>17.7f}"
                                             for result in results))

    print()
    reference = np.array(results[0]["losses"])
    agree = True
    for result in results[1:]:
        losses = np.array(result["losses"])
        difference = float(np.max(np.abs(losses - reference) / np.abs(reference)))
        verdict = "agrees" if difference <= args.rtol else "DISAGREES"
        agree &= difference <= args.rtol
        exact = " (bit for bit)" if difference == 0 else ""
        print(f"agreement: {result['path']} {verdict} with {names[0]}: largest relative "
              f"difference over the {args.steps} steps {difference:.2e}{exact} "
              f"(tolerance {args.rtol:.0e})")
    decreased = all(result["losses"][-1] < result["losses"][0] for result in results)
    print(f"training: the loss went from {reference[0]:.4f} to {reference[-1]:.4f} "
          f"({'decreased' if decreased else 'DID NOT DECREASE'})")
    return 0 if agree and decreased else 1


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--batch", type=int, default=8, help="sequences a step (default 8)")
    parser.add_argument("--context", type=int, default=64,
                        help="tokens a sequence (default 64)")
    parser.add_argument("--hidden", type=int, default=256, help="model width H (default 256)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--vocab", type=int, default=32_000,
                        help="vocabulary size V, <unk> included (default 32000)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="AdamW's learning rate (default 1e-3)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(DEFAULT_PATHS),
                        help="the loss paths to train with, the first being the one the "
                        f"others are compared with (default: {' '.join(DEFAULT_PATHS)})")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds' run for CI: 6 steps, batch 4, context 32, "
                        "hidden 64, 1 layer, vocabulary 8000, 1 thread (explicit flags "
                        "still win)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and fastloss (default: the CPUs this process "
                        "may use)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="the largest relative difference between two paths' losses at "
                        "any step (default 1e-4; see the module's docstring)")
    parser.add_argument("--seed", type=int, default=0)
    # internal: one path's training, in the child process
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        # one thread: the quick run checks the curves, not the speed, and on a busy machine
        # the idle threads of torch's and the BLAS's pools, spinning on shared cores, made
        # its tiny steps 60 times slower (1.3 s instead of 0.02 s, load average 9 on 2 cores)
        parser.set_defaults(steps=6, batch=4, context=32, hidden=64, layers=1, vocab=8000,
                            threads=1)
        args = parser.parse_args(argv)      # the flags given still win
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    for name in ("steps", "batch", "context", "hidden", "layers", "heads", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    if args.vocab < 2:
        parser.error(f"--vocab: expected an integer >= 2, got {args.vocab}")
    if args.hidden % args.heads:
        parser.error(f"--hidden ({args.hidden}) must be a multiple of --heads ({args.heads})")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(train(args, args.child, args.tokens_file)))
        return 0

    started = time.perf_counter()
    ids, words, corpus_description = build_corpus(args.vocab)
    args.vocab = len(words)            # fewer when the library has fewer distinct tokens
    print(f"corpus: {corpus_description} (read in {time.perf_counter() - started:.1f} s)")
    tokens_per_step = args.batch * args.context
    print(f"model: causal transformer, {args.layers} block(s), hidden {args.hidden}, "
          f"{args.heads} heads, context {args.context}, classifier tied to the embedding "
          f"({args.vocab} x {args.hidden}); AdamW lr {args.lr:g}, gradients clipped at "
          f"norm 1; {args.steps} steps of {args.batch} x {args.context} = "
          f"{tokens_per_step} tokens; {args.threads} thread(s)")
    print(f"the logits of a step ({tokens_per_step} x {args.vocab} float32): "
          f"{mib(4 * tokens_per_step * args.vocab)}")
    print("each path trains in a fresh interpreter; peak RSS growth: its largest resident "
          "size during training less that before the first step (AdamW's state and the "
          "gradients included); largest step peak: the most any step after the first "
          "touched beyond the resident size at its start")
    print(flush=True)

    directory = tempfile.mkdtemp(prefix="fastloss-train-lm-")
    try:
        tokens_file = os.path.join(directory, "tokens.npy")
        np.save(tokens_file, ids)
        del ids
        results = []
        for path in args.paths:
            path_started = time.perf_counter()
            results.append(run_path(args, path, tokens_file))
            print(f"{path}: trained in {time.perf_counter() - path_started:.1f} s "
                  f"(the interpreter's start included)", flush=True)
        print()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    status = report(args, results)
    try:
        import resource
    except ImportError:                   # not on Windows
        print(f"whole run: {time.perf_counter() - started:.1f} s")
        return status
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu = children.ru_utime + children.ru_stime + me.ru_utime + me.ru_stime
    print(f"whole run: {time.perf_counter() - started:.1f} s ({cpu:.1f} s of CPU time in "
          f"all its processes; on a busy machine the wall time is the larger by the share "
          f"of the cores other work took)")
    return status


if __name__ == "__main__":
    sys.exit(main())
