"""Run a command under valgrind's memcheck and fail on any error that involves fastloss.

CPython and the dynamic loader produce memcheck reports of their own (reads of
partially initialised integers in longobject.c, rpath string scans in ld.so)
that have nothing to do with fastloss; CPython ships suppression files for them
only in its source tree.  So this runs memcheck with XML output and counts the
errors whose stack, or the stack of an uninitialised value's origin, has a
frame in fastloss's extension module.  Leaks are not checked: the interpreter
does not free modules' type objects at exit, which memcheck reports as leaks.  Usage:

    python tests/tools/memcheck.py [-k TEXT] [-- COMMAND ...]   (default: fastloss check)

The default command is split into one shard per usable core (``fastloss check --shard
K/N``), each under its own memcheck, run side by side: memcheck runs a process's threads
one at a time, so one process would use one core (never more shards than checks);
``-k TEXT`` runs only the checks whose name contains TEXT. Exit status 0 when there are
none, 1 otherwise (the offending stacks are printed).
"""
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

OUR_OBJECT = "fastloss/_kernels"


def fastloss_errors(xml_path):
    """The memcheck <error> records with a frame in fastloss's extension module."""
    tree = ElementTree.parse(xml_path)
    found = []
    for error in tree.getroot().iter("error"):
        if (error.findtext("kind") or "").startswith("Leak_"):
            continue
        objects = [frame.findtext("obj") or "" for frame in error.iter("frame")]
        if any(OUR_OBJECT in obj for obj in objects):
            found.append(error)
    return found


def describe(error):
    lines = [error.findtext("kind") or "?", (error.findtext("what") or
                                              error.findtext("xwhat/text") or "").strip()]
    for frame in error.iter("frame"):
        lines.append(f"    {frame.findtext('fn') or '?'} ({frame.findtext('obj') or '?'}"
                     f"{':' + frame.findtext('line') if frame.findtext('line') else ''})")
    return "\n".join(lines)


def main(argv):
    import fastloss  # the one the command must run: installed, or built in place

    if "--" in argv:
        commands = [argv[argv.index("--") + 1:]]
    else:
        from fastloss.check import select_checks

        check = [sys.executable, "-m", "fastloss", "check", "-q"]
        pattern = argv[argv.index("-k") + 1] if "-k" in argv else None
        if pattern is not None:
            check += ["-k", pattern]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        jobs = max(1, min(cores, len(select_checks(pattern))))
        commands = ([check + [f"--shard={k}/{jobs}"] for k in range(jobs)] if jobs > 1
                    else [check])
    # run beside that package: from a source checkout's root, `-m` would import the
    # checkout's unbuilt fastloss/ instead
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env = dict(os.environ, PYTHONMALLOC="malloc")  # let memcheck see every allocation
    failed = False
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        for index, command in enumerate(commands):
            xml_path = os.path.join(tmp, f"memcheck-{index}.xml")
            running.append((xml_path, command, subprocess.Popen(
                ["valgrind", "--tool=memcheck", "--track-origins=yes", "--leak-check=no",
                 # superblocks of at most 30 instructions (default 60): with origin
                 # tracking, the distillation's unrolled AVX2 series made a translation
                 # that exhausted VEX's temporary storage ("the 'impossible' happened")
                 "--vex-guest-max-insns=30",
                 "--xml=yes", f"--xml-file={xml_path}", *command], env=env, cwd=package_parent)))
        for xml_path, command, process in running:
            if process.wait() != 0:
                print(f"memcheck: {' '.join(command[1:])} exited with {process.returncode}",
                      file=sys.stderr)
                failed = True
            else:
                errors += fastloss_errors(xml_path)
    for error in errors:
        print(describe(error), file=sys.stderr)
    print(f"memcheck: {len(errors)} error(s) involving fastloss")
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
