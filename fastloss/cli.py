"""The ``fastloss`` command line: ``info``, ``check`` and ``bench``.

``python -m fastloss ...`` and the ``fastloss`` console script both call ``main``,
whose return value is the exit code (argparse's usage errors give 2).
"""
import argparse
import importlib.util
import os
import sys

__all__ = ["main"]

# fastloss.bench.FAMILIES, in its order (not imported here: `fastloss --help` stays light)
FAMILY_NAMES = ("cross_entropy", "cross_entropy_few_classes", "cross_entropy_blocks",
                "cross_entropy_small", "elementwise", "elementwise_small", "contrastive",
                "contrastive_pieces", "distill", "linear_cross_entropy")
# the bfloat16 table needs ml_dtypes (an optional dependency), looked up, not imported
if importlib.util.find_spec("ml_dtypes") is not None:
    FAMILY_NAMES += ("cross_entropy_bfloat16", "elementwise_bfloat16",
                     "contrastive_bfloat16")


def invoked_as_command_line():
    """Whether this process runs fastloss's command line: ``python [options] -m fastloss``
    (while it imports the package, runpy has set sys.argv[0] to "-m") or the console
    script pip writes, a file named fastloss run as __main__."""
    if sys.argv and sys.argv[0] == "-m":
        argv = getattr(sys, "orig_argv", [])
        return any(arg == "-mfastloss" or (arg == "fastloss" and argv[i - 1].startswith("-")
                                          and argv[i - 1].endswith("m"))
                   for i, arg in enumerate(argv) if i > 0)
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(sys.argv and script and os.path.basename(script) == "fastloss"
                and os.path.abspath(script) == os.path.abspath(sys.argv[0]))


def exit_for_environment_error(error):
    """End the command line over a FASTLOSS_* variable fastloss cannot use (``error``,
    raised by ``import fastloss``): one line, no traceback, status 2 (argparse's usage
    errors' status)."""
    print(f"fastloss: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def _positive_int(text):
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _thread_count(text):
    """--threads: an integer >= 1, capped at fastloss._config.MAX_THREADS as num_threads=
    is (torch, given the same count, ends the process with a segmentation fault at
    100000 threads: torch 2.13)."""
    from fastloss._config import MAX_THREADS

    return min(_positive_int(text), MAX_THREADS)


def _cannot_write(path):
    """Why the file ``path`` cannot be written (a directory, a missing or read-only
    directory), or None: the benchmark's outputs are checked before it runs."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a directory"
    if not os.path.isdir(directory):
        return f"no directory {directory}"
    if not os.access(path if os.path.exists(path) else directory, os.W_OK):
        return "permission denied"
    return None


def _shard(text):
    """'K/N' -> (K, N), integers with 0 <= K < N."""
    k, _, n = text.partition("/")
    try:
        shard = (int(k, 10), int(n, 10))
    except ValueError:
        shard = None
    if shard is None or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected K/N with integers 0 <= K < N, got {text!r}")
    return shard


def _size(text):
    """'N,C' -> (N, C) or 'n' -> (n,), integers >= 1 (the hidden --size option, for tests)."""
    parts = text.split(",")
    try:
        size = tuple(int(part, 10) for part in parts)
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected N,C or n with integers >= 1, got {text!r}")
    return size


def _parser():
    from fastloss import __version__

    parser = argparse.ArgumentParser(
        prog="fastloss",
        description="fastloss: fused loss kernels (C/OpenMP) behind a NumPy API.")
    parser.add_argument("--version", action="version", version=f"fastloss {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "info", help="show the build: version, compiler, OpenMP, SIMD path, threads",
        description="Print version, compiler, OpenMP, SIMD path and default threads.")

    check = commands.add_parser(
        "check", help="quick self-test of every kernel against fastloss.reference",
        description="Compare every kernel with the float64 NumPy reference under the "
                    "accuracy contract, and check bit-identical results across thread "
                    "counts. Exit code 0 when every check passes, 1 otherwise.")
    check.add_argument("-k", dest="pattern", metavar="TEXT",
                       help="run only the checks whose name contains TEXT")
    check.add_argument("-q", "--quiet", action="store_true",
                       help="print only failed checks and the summary")
    check.add_argument("--shard", type=_shard, metavar="K/N",
                       help="run only every N-th check from the K-th on (K = 0 .. N-1), to "
                            "split the checks across N processes")

    bench = commands.add_parser(
        "bench", help="benchmark table against the NumPy reference and PyTorch",
        description="Time cross-entropy (float32, N=4096, C=50257; N=65536, C=10; and a grid "
                    "of small shapes against torch), the regression and binary losses "
                    "(float32, 2**25 elements; and small sizes) and the contrastive losses "
                    "(N=4096, D=768; and the pieces of contrastive_pairwise) "
                    "against np.copyto, a read-only pass, the NumPy reference and, when "
                    "installed, PyTorch; report medians and ratios, one table per family, "
                    "and the performance targets under each (judged at the sizes they are "
                    "set for; BENCHMARKS.md lists them).")
    bench.add_argument("--family", choices=("all",) + FAMILY_NAMES, default="all",
                       help="which table to run (default: all, one after the other)")
    bench.add_argument("--quick", action="store_true",
                       help="smaller sizes (N=1024 rows or fewer, 2**22 elements, part of "
                            "the small-shape grid) and fewer repeats, in a minute or two; "
                            "each target is "
                            "judged only at the size it is set for (most at the full "
                            "sizes), elsewhere shown")
    bench.add_argument("--json", dest="json_file", metavar="FILE",
                       help="also write the results as JSON to FILE")
    bench.add_argument("--plot", dest="plot_file", metavar="FILE.png",
                       help="also draw the ratios as bar charts, one per family, to FILE.png "
                            "(needs matplotlib: pip install 'fastloss[plot]')")
    bench.add_argument("--threads", type=_thread_count, metavar="N",
                       help="threads for fastloss and torch (default: fastloss's default; "
                            "at most fastloss's MAX_THREADS)")
    bench.add_argument("--repeat", type=_positive_int, metavar="R",
                       help="timed calls per case (default 10, 5 with --quick; 100 and 40 "
                            "in the few-classes table; in the small-shape grid the least "
                            "of each cell's rounds, which fill a time budget)")
    bench.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar on stderr")
    bench.add_argument("--no-compile", dest="torch_compile", action="store_false",
                       help="leave out the torch.compile row (compiling takes from a few "
                            "seconds to half a minute)")
    # For tests: a tiny problem so the command runs in a moment. Not part of the CLI.
    bench.add_argument("--size", type=_size, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # usage errors (2), --help and --version (0)
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 1)

    if args.command == "info":
        import fastloss

        fastloss.show_config()
        return 0
    if args.command == "check":
        from fastloss import check

        return check.main(pattern=args.pattern, verbose=not args.quiet, shard=args.shard)
    if args.command == "bench":
        from fastloss import bench

        problem = None
        if args.size is not None:
            if args.family == "all":
                problem = "--size needs --family"
            elif len(args.size) != len(bench.FAMILIES[args.family].size_names):
                names = ",".join(bench.FAMILIES[args.family].size_names)
                problem = f"--size for {args.family} is {names}"
        for option, path in (("--json", args.json_file), ("--plot", args.plot_file)):
            why = None if path is None or problem else _cannot_write(path)
            if why:
                problem = f"{option}: cannot write {path}: {why}"
        if problem:
            parser.print_usage(sys.stderr)
            print(f"fastloss: error: {problem}", file=sys.stderr)
            return 2
        return bench.main(quick=args.quick, json_file=args.json_file, threads=args.threads,
                          repeat=args.repeat, size=args.size, progress=args.progress,
                          family=args.family, plot_file=args.plot_file,
                          torch_compile=args.torch_compile)
    parser.print_usage(sys.stderr)
    print("fastloss: error: a command is required (info, check or bench)", file=sys.stderr)
    return 2
