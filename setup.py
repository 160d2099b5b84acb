"""Build the fastloss C kernels and their Cython wrapper.

Compiler flags are found by trying them: OpenMP (``-fopenmp``, or a serial
build when the compiler has none, or when FASTLOSS_NO_OPENMP=1), and whether
the compiler can build the AVX2 + FMA and AVX-512 variants of the kernels that
are chosen at run time.  Always ``-O3``; never ``-ffast-math`` (it reorders sums and breaks
inf/NaN handling, which the kernels rely on).  FASTLOSS_SANITIZE=1 builds with
AddressSanitizer and UndefinedBehaviorSanitizer for the hardening tests.

No debug information (``-g0``, over the ``-g`` that Python's own flags pass): it changes no
instruction, but it took a quarter of the compile time and three quarters of the module's
94 MB.  FASTLOSS_DEBUG_INFO=1 keeps it (for perf, callgrind and gdb by line); the
sanitizers' build keeps the line tables only (``-g1``: their reports name file and line),
and leaves what to inline to the compiler (FASTLOSS_NO_FORCED_INLINE, csrc/common.h: 90 s
instead of 340 s on 2 cores).

The extension's C sources compile in parallel, one compiler process per core
(FASTLOSS_BUILD_JOBS=N sets the number; 1 compiles them one after another): setuptools
itself compiles the sources of one extension serially.
"""
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_SOURCES = [
    "csrc/common.c",
    "csrc/dispatch.c",
    "csrc/cross_entropy.c",
    "csrc/cross_entropy_avx2.c",
    "csrc/cross_entropy_avx512.c",
    "csrc/elementwise.c",
    "csrc/elementwise_avx2.c",
    "csrc/elementwise_avx512.c",
    "csrc/contrastive.c",
    "csrc/contrastive_avx2.c",
    "csrc/contrastive_avx512.c",
    "csrc/box.c",
    "csrc/box_avx2.c",
    "csrc/box_avx512.c",
    "csrc/vocab.c",
    "csrc/vocab_avx2.c",
    "csrc/vocab_avx512.c",
    "csrc/sequence.c",
    "csrc/half_convert.c",
]

OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
#pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""

AVX512_PROBE = """
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")
#include <immintrin.h>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"))) float f(float *x) {
    __m512 v = _mm512_loadu_ps(x);
    return _mm512_reduce_add_ps(_mm512_fmadd_ps(v, v, v));
}
int main(void) { float x[16] = {0}; return (int)f(x); }
"""

AVX2_PROBE = """
#pragma GCC target("avx2,fma")
#include <immintrin.h>
__attribute__((target("avx2,fma"))) float f(float *x) {
    __m256 v = _mm256_loadu_ps(x);
    return _mm256_cvtss_f32(_mm256_fmadd_ps(v, v, v));
}
int main(void) { float x[8] = {0}; return (int)f(x); }
"""


def _compiles(compiler, source, compile_args, link_args=()):
    """True when `source` compiles and links with the given flags."""
    tmp = tempfile.mkdtemp(prefix="fastloss-probe-")
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as handle:
            handle.write(source)
        objects = compiler.compile([path], output_dir=tmp, extra_postargs=list(compile_args))
        compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=list(link_args))
        return True
    except Exception:  # any compile or link failure means "no"
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_jobs():
    """How many sources to compile at once: FASTLOSS_BUILD_JOBS, else the usable cores."""
    value = os.environ.get("FASTLOSS_BUILD_JOBS", "")
    if value:
        jobs = int(value)
        if jobs < 1:
            raise ValueError(f"FASTLOSS_BUILD_JOBS must be a positive integer, got {value!r}")
        return jobs
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _compile_in_parallel(compiler, jobs):
    """Make ``compiler.compile`` run one compiler process per source, ``jobs`` at a time.

    The object files and their folders are set up serially (``_setup_compile``, as
    distutils' own ``compile`` does); only the compiler processes run side by side.
    """
    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            src, ext = build[obj]
            compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        # the biggest sources first, so that the longest compile does not start last
        pending = sorted((obj for obj in objects if obj in build),
                         key=lambda obj: -os.path.getsize(build[obj][0]))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(one, obj) for obj in pending]:
                future.result()  # re-raise a compile error
        return objects

    compiler.compile = compile


class BuildExt(build_ext):
    """build_ext that probes the compiler before building."""

    def build_extensions(self):
        compiler = self.compiler
        is_msvc = compiler.compiler_type == "msvc"
        # -fno-trapping-math: we never enable FP traps, and without it gcc will not
        # if-convert (so not vectorise) the range selects of the exp kernel.  It
        # changes no result, unlike -ffast-math.
        compile_args = ["/O2"] if is_msvc else [
            "-O3", "-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden"]
        link_args = []
        macros = []

        openmp = None
        if os.environ.get("FASTLOSS_NO_OPENMP", "") not in ("", "0"):
            openmp = None
        elif is_msvc:
            openmp = (["/openmp"], [])
        else:
            for flags in (["-fopenmp"], ["-Xpreprocessor", "-fopenmp"]):
                for libs in ([], ["-lomp"]):
                    if _compiles(compiler, OPENMP_PROBE, flags, flags + libs):
                        openmp = (flags, flags + libs)
                        break
                if openmp:
                    break
        if openmp:
            compile_args += openmp[0]
            link_args += openmp[1]
        else:
            print("fastloss: building without OpenMP (serial kernels)", file=sys.stderr)
            if not is_msvc and _compiles(compiler, "int main(void) { return 0; }", ["-fopenmp-simd"]):
                compile_args.append("-fopenmp-simd")  # the simd pragmas still apply

        if is_msvc or not _compiles(compiler, AVX2_PROBE, compile_args, link_args):
            macros.append(("FASTLOSS_NO_AVX2", "1"))
            print("fastloss: building without the AVX2 kernels", file=sys.stderr)
        if is_msvc or not _compiles(compiler, AVX512_PROBE, compile_args, link_args):
            macros.append(("FASTLOSS_NO_AVX512", "1"))
            print("fastloss: building without the AVX-512 kernels", file=sys.stderr)

        if os.environ.get("FASTLOSS_SANITIZE", "") not in ("", "0"):
            sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                        "-fno-sanitize-recover=undefined"]
            compile_args += sanitize + ["-O1", "-g1"]
            link_args += sanitize
            # the compiler's own inlining (csrc/common.h): forced, the instrumented
            # build took 11 minutes of compiler time, 7.6 of them in vocab*.c
            macros.append(("FASTLOSS_NO_FORCED_INLINE", "1"))
        elif not is_msvc and os.environ.get("FASTLOSS_DEBUG_INFO", "") in ("", "0"):
            compile_args.append("-g0")

        for ext in self.extensions:
            ext.extra_compile_args = compile_args + list(ext.extra_compile_args)
            ext.extra_link_args = link_args + list(ext.extra_link_args)
            ext.define_macros = macros + list(ext.define_macros)
        # setuptools rebuilds an extension only when a source is newer than the module it
        # built before, and it keeps that module in build/ between `pip install .` runs: a
        # build with other flags (FASTLOSS_SANITIZE, FASTLOSS_NO_OPENMP, another compiler)
        # would install the previous build's module as it was.  The flags are recorded
        # beside the objects; a build whose flags differ from the last one's compiles again.
        flags = repr((getattr(compiler, "compiler_so", None), getattr(compiler, "linker_so", None),
                      [(ext.name, ext.extra_compile_args, ext.extra_link_args, ext.define_macros)
                       for ext in self.extensions]))
        stamp = os.path.join(self.build_temp, "fastloss-build-flags.txt")
        try:
            with open(stamp) as handle:
                same_flags = handle.read() == flags
        except OSError:
            same_flags = False
        if not same_flags:
            self.force = True
        jobs = _build_jobs()
        if jobs > 1 and not is_msvc:
            _compile_in_parallel(compiler, jobs)
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as handle:
            handle.write(flags)


extensions = [
    Extension(
        "fastloss._kernels",
        sources=["fastloss/_kernels.pyx"] + C_SOURCES,
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=[os.path.join("csrc", name) for name in os.listdir("csrc") if name.endswith(".h")]
        + ["fastloss/_cross_entropy.pxi", "fastloss/_elementwise.pxi", "fastloss/_common.pxd",
           "fastloss/_contrastive.pxi", "fastloss/_box.pxi", "fastloss/_sequence.pxi"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
