"""OpenMP runtimes in one process: torch's and fastloss's, in a training loop.

    python benchmarks/omp_runtimes.py [--busy] [--quick] [--json FILE] [--rounds R]

torch's wheel ships its own libgomp (torch/lib/libgomp.so.1); fastloss links the system's.
Both have the SONAME libgomp.so.1, so the dynamic loader keeps whichever is loaded first
and the other library binds to it: one OpenMP runtime, one thread pool, whose settings
(GOMP_SPINCOUNT, OMP_WAIT_POLICY) are read once, when that libgomp loads. A wheel of
fastloss repaired by auditwheel would vendor libgomp under a hashed name, and then the
process has two runtimes, two pools, each spinning after its parallel regions while the
other wants the cores.

This script measures a training step that alternates torch ops (a Linear forward and
backward, an AdamW step) with a fastloss loss (``fastloss.torch.cross_entropy``, or the
NumPy API's ``cross_entropy_value_and_grad`` with the gradient handed to
``logits.backward``), beside the same step with torch's ``F.cross_entropy``, at two
shapes (a third, "large", with ``--shapes``), in child processes that differ in:

- the layout: one runtime, torch imported first (torch's libgomp); one runtime, fastloss
  imported first (the system's libgomp); two runtimes (a copy of the imported fastloss
  whose extension is relinked, by renaming its DT_NEEDED entry, to a private copy of the
  system's libgomp with its SONAME renamed: what a vendored wheel looks like);
- the environment: as is (fastloss's GOMP_SPINCOUNT=10000 default applies only when its
  import loads libgomp), GOMP_SPINCOUNT=300000 (libgomp's own default), 10000, 1000,
  OMP_WAIT_POLICY=passive;
- the thread counts of torch and fastloss (with the as-is environment).

With ``--busy`` a second process burns one core for the whole run (``while True: pass``).
The table gives each configuration's median step time per shape and loss; BENCHMARKS.md
("Two OpenMP runtimes in one process") records what it showed.
"""
import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = {  # name: (N rows, D features, C classes), and timed steps per round
    "small": ((64, 128, 1000), 100),
    "medium": ((256, 256, 4096), 20),
    "large": ((256, 256, 32000), 3),
}
LOSSES = ("torch", "adapter", "numpy")
STEP_BUDGET_S = 0.5  # per shape, loss and round

ENVIRONMENTS = {
    "as is": {},
    "GOMP_SPINCOUNT=300000": {"GOMP_SPINCOUNT": "300000"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
}
LAYOUTS = ("torch first", "fastloss first", "two runtimes")
THREADS = ((2, 2), (2, 1), (1, 2), (1, 1))  # (torch, fastloss)


# ----------------------------------------------------------------------------------------
# The child: one configuration, every shape and loss
# ----------------------------------------------------------------------------------------

def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _openmp_libraries():
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps
                       if "libgom" in line or "libiomp" in line or "libomp" in line})


def child(config):
    if config["import"] == "fastloss first":
        import fastloss
        import torch
    else:
        import torch
        import fastloss
    import numpy as np
    import torch.nn.functional as F

    import fastloss.torch as FL

    torch.manual_seed(0)
    torch.set_num_threads(config["torch_threads"])
    fastloss.set_num_threads(config["fastloss_threads"])
    rounds = config["rounds"]
    results = {}
    for shape_name in config["shapes"]:
        (n_rows, dim, n_classes), steps = SHAPES[shape_name]
        model = torch.nn.Linear(dim, n_classes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        hidden = torch.randn(n_rows, dim)
        labels = torch.randint(0, n_classes, (n_rows,))
        labels_array = labels.numpy()

        def step(loss_name):
            clock = [time.perf_counter()]
            logits = model(hidden)
            clock.append(time.perf_counter())
            if loss_name == "torch":
                loss = F.cross_entropy(logits, labels)
            elif loss_name == "adapter":
                loss = FL.cross_entropy(logits, labels)
            else:
                value, grad = fastloss.cross_entropy_value_and_grad(
                    logits.detach().numpy(), labels_array)
            clock.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            if loss_name == "numpy":
                logits.backward(torch.from_numpy(grad))
            else:
                loss.backward()
            clock.append(time.perf_counter())
            optimizer.step()
            clock.append(time.perf_counter())
            return np.diff(clock)

        times = {loss_name: [] for loss_name in config["losses"]}
        cpu = {loss_name: 0.0 for loss_name in config["losses"]}
        for loss_name in config["losses"]:  # warm-up: allocations, MKL's first calls
            for _ in range(2):
                step(loss_name)
        for _ in range(rounds):  # the losses take turns, so drifts in load hit all alike
            for loss_name in config["losses"]:
                # `steps` steps, or fewer (at least 3) where a configuration makes them
                # pathologically slow
                deadline = time.perf_counter() + STEP_BUDGET_S
                cpu_start = _cpu_seconds()
                for count in range(steps):
                    times[loss_name].append(step(loss_name))
                    if count >= 2 and time.perf_counter() > deadline:
                        break
                cpu[loss_name] += _cpu_seconds() - cpu_start
        results[shape_name] = {}
        for loss_name, phases in times.items():
            phases = np.array(phases)
            results[shape_name][loss_name] = {
                "step_ms": float(np.median(phases.sum(axis=1)) * 1e3),
                "wall_ms_per_step": float(phases.sum() / len(phases) * 1e3),
                # every thread's CPU time (spinning included) per step
                "cpu_ms_per_step": cpu[loss_name] / len(phases) * 1e3,
                "phases_ms": dict(zip(("model forward", "loss", "backward", "optimizer"),
                                      (float(value) for value in
                                       np.median(phases, axis=0) * 1e3))),
                "steps": len(phases),
            }
    return {"config": config, "openmp_libraries": _openmp_libraries(),
            "environment": {name: os.environ.get(name)
                            for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")},
            "torch_threads": torch.get_num_threads(), "results": results}


# ----------------------------------------------------------------------------------------
# The parent: the configurations, the second runtime, the busy core, the table
# ----------------------------------------------------------------------------------------

def _system_libgomp(extension):
    """The libgomp that ``extension`` resolves to without torch (ldd)."""
    output = subprocess.run(["ldd", extension], capture_output=True, text=True).stdout
    for line in output.splitlines():
        if "libgomp" in line and "=>" in line:
            return os.path.realpath(line.split("=>")[1].split()[0])
    raise RuntimeError(f"{extension} does not link libgomp (an OpenMP-less build?)")


def make_two_runtime_copy(directory):
    """A copy of the imported fastloss whose extension needs ``libgomq.so.1``: a copy of
    the system's libgomp whose SONAME is renamed the same way. Same-length renames of the
    strings in .dynstr keep every offset; the loader then maps it as a second runtime
    beside any libgomp.so.1. Returns the directory for PYTHONPATH and LD_LIBRARY_PATH."""
    import fastloss

    package = os.path.dirname(os.path.abspath(fastloss.__file__))
    target = os.path.join(directory, "fastloss")
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    extension = next(os.path.join(target, name) for name in os.listdir(target)
                     if name.startswith("_kernels") and name.endswith(".so"))
    libgomp = _system_libgomp(os.path.join(package, os.path.basename(extension)))
    old, new = b"libgomp.so.1\0", b"libgomq.so.1\0"
    for source, destination in ((extension, extension),
                                (libgomp, os.path.join(directory, "libgomq.so.1"))):
        with open(source, "rb") as handle:
            data = handle.read()
        if old not in data:
            raise RuntimeError(f"{source}: no {old!r} to rename")
        with open(destination, "wb") as handle:
            handle.write(data.replace(old, new))
    return directory


def configurations(quick, layouts=LAYOUTS, environments=tuple(ENVIRONMENTS)):
    configs = []
    if quick:
        environments = [name for name in environments
                        if name in ("as is", "OMP_WAIT_POLICY=passive")]
    for layout in layouts:
        for env_name in environments:
            configs.append({"layout": layout, "env_name": env_name,
                            "torch_threads": 2, "fastloss_threads": 2})
    if "as is" in environments:
        for torch_threads, fastloss_threads in THREADS[1:]:
            for layout in [name for name in layouts if name != "fastloss first"][:1 if quick
                                                                                 else None]:
                configs.append({"layout": layout, "env_name": "as is",
                                "torch_threads": torch_threads,
                                "fastloss_threads": fastloss_threads})
    return configs


def run_child(config, rounds, shapes, two_runtime_dir):
    env = dict(os.environ)
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                 "FASTLOSS_NUM_THREADS"):
        env.pop(name, None)
    env.update(ENVIRONMENTS[config["env_name"]])
    if config["layout"] == "two runtimes":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [two_runtime_dir,
                                                          env.get("PYTHONPATH")]))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [two_runtime_dir,
                                                               env.get("LD_LIBRARY_PATH")]))
    else:
        import fastloss

        parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))
    child_config = dict(config, rounds=rounds, shapes=list(shapes), losses=list(LOSSES),
                        **{"import": "fastloss first" if config["layout"] == "fastloss first"
                           else "torch first"})
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(child_config)],
        env=env, capture_output=True, text=True, timeout=1200,
        cwd=tempfile.gettempdir())  # not a checkout: its unbuilt fastloss/ would shadow
    if completed.returncode != 0:
        raise RuntimeError(f"child {config} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def busy_core(enabled):
    """A second process burning one core while the block runs (when enabled)."""
    if not enabled:
        yield None
        return
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield burner.pid
    finally:
        burner.kill()
        burner.wait()


def _label(config):
    threads = f"torch {config['torch_threads']}/fastloss {config['fastloss_threads']}"
    return f"{config['layout']:<14} {config['env_name']:<24} {threads}"


def format_table(children, shapes):
    """Per configuration and shape: each loss's median step ms over the passes (min..max
    of the passes' medians), and the CPU ms per step of every thread (spinning included)."""
    lines = []
    for shape in shapes:
        lines.append("")
        lines.append(f"{shape}: per loss, the median step ms over the passes [min..max of "
                     f"the passes' medians], the mean step ms and the CPU ms per step (every "
                     f"thread, spinning included)")
        header = f"{'layout':<14} {'environment':<24} {'threads':<20}"
        header += "".join(f" {loss:>33}" for loss in LOSSES)
        lines.extend([header, "-" * len(header)])
        for result in children:
            line = f"{_label(result['config']):<60}"
            for loss in LOSSES:
                cell = result["results"][shape][loss]
                spread = f"[{min(cell['passes_ms']):.2f}..{max(cell['passes_ms']):.2f}]"
                line += (f" {cell['step_ms']:>7.2f} {spread:>13} {cell['wall_ms_per_step']:>5.1f}"
                         f" {cell['cpu_ms_per_step']:>5.1f}")
            lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--busy", action="store_true",
                        help="run with a second process burning one core")
    parser.add_argument("--quick", action="store_true",
                        help="fewer configurations (as is and passive; thread variants of "
                             "torch first)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which the losses take turns, per child (default 3)")
    parser.add_argument("--passes", type=int, default=3,
                        help="children per configuration, run in turns over all the "
                             "configurations; each cell is the median over them (default 3)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS),
                        help=f"comma-separated subset of {', '.join(LAYOUTS)}")
    parser.add_argument("--environments", default=",".join(ENVIRONMENTS),
                        help=f"comma-separated subset of {', '.join(ENVIRONMENTS)}")
    parser.add_argument("--shapes", default="small,medium",
                        help=f"comma-separated subset of {', '.join(SHAPES)}")
    parser.add_argument("--json", dest="json_file", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    shapes = args.shapes.split(",")
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                    if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
          f"{'busy (a second process burns one core)' if args.busy else 'quiet'}")
    print("median step ms (Linear forward, the loss, backward, AdamW step); "
          "shapes N x D -> C: " + ", ".join(f"{name} {n}x{d}->{c}" for name, ((n, d, c), _)
                                            in SHAPES.items() if name in shapes))
    configs = configurations(args.quick, args.layouts.split(","),
                             args.environments.split(","))
    passes = [[] for _ in configs]
    with tempfile.TemporaryDirectory(prefix="fastloss-two-runtimes-") as directory:
        two_runtime_dir = make_two_runtime_copy(directory)
        with busy_core(args.busy):
            for pass_index in range(args.passes):
                for config, results in zip(configs, passes):
                    load = os.getloadavg()[0]
                    result = run_child(config, args.rounds, shapes, two_runtime_dir)
                    result["load_average_before"] = load
                    results.append(result)
                    libraries = ", ".join(os.path.basename(path)
                                          for path in result["openmp_libraries"])
                    print(f"  pass {pass_index + 1}: {_label(config)}: {libraries}; load "
                          f"{load:.2f}", file=sys.stderr, flush=True)
    children = [_median_of_passes(results) for results in passes]
    print(format_table(children, shapes))
    if args.json_file:
        with open(args.json_file, "w") as handle:
            json.dump({"cpu": cpu, "busy": args.busy, "children": children,
                       "passes": passes}, handle, indent=1)
    return 0


def _median_of_passes(results):
    """One configuration's result: each cell the median over its passes' medians."""
    merged = dict(results[0], results={})
    for shape, losses in results[0]["results"].items():
        merged["results"][shape] = {}
        for loss in losses:
            cells = [result["results"][shape][loss] for result in results]
            medians = [cell["step_ms"] for cell in cells]
            merged["results"][shape][loss] = {
                "step_ms": statistics.median(medians), "passes_ms": medians,
                "cpu_ms_per_step": statistics.median(cell["cpu_ms_per_step"] for cell in cells),
                "wall_ms_per_step": statistics.median(cell["wall_ms_per_step"]
                                                      for cell in cells)}
    merged["load_averages"] = [result["load_average_before"] for result in results]
    return merged


if __name__ == "__main__":
    sys.exit(main())
