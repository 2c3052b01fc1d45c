"""A compiled predictor for LightGBM text models: the same raw margins, several times faster.

The LightGBM text model is turned into C (one nested ``if``/``else`` per tree, each
split decided exactly as LightGBM 4's ``Tree::NumericalDecision`` /
``CategoricalDecision`` do, tree outputs summed per class in double in LightGBM's
order), compiled with the system C compiler (``$CC`` or ``cc``) into a shared library
and called through :mod:`ctypes`. The margins are then *identical* to
``Booster.predict(raw_score=True)`` (not merely close): the same comparisons on the
same doubles and the same additions in the same order.

The library is built once per model and cached in ``$FPI_CACHE_DIR`` (default
``$XDG_CACHE_HOME/fpi`` or ``~/.cache/fpi``) under a sha256 of the model text, this
generator's version and the compiler's identity; it is written to a temporary file and
renamed into place, so concurrent processes are safe. Every time a model is loaded
the compiled margins are compared with LightGBM's on rows built to reach every
branch kind (NaN, zero, thresholds and their neighbours, categories); any
difference, a missing or failing compiler, or an unsupported model falls back to
LightGBM with a debug log line.

``FPI_PREDICTOR=lightgbm`` turns it off, ``compiled`` makes a failure an error
(for tests and benchmarks), ``auto`` (the default) falls back quietly.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import lightgbm as lgb
import numpy as np

from fpi import files
from fpi.errors import ModelError

log = logging.getLogger(__name__)

#: Bump when the generated code changes: part of the cache key.
GENERATOR_VERSION: Final = "4"
ENV_PREDICTOR: Final = "FPI_PREDICTOR"
#: Rows a model scores with LightGBM in one process before its library is built, unless a
#: built library is already cached (then it is used at once). Building costs about as much
#: CPU as LightGBM scoring 150,000 to 400,000 rows (measured on 588- and 1,266-tree
#: models: 8 to 31 ms of compiling per tree against 50 to 90 ns saved per tree and row),
#: so a small night never pays for it and a large one pays at most about twice the best
#: choice (rent until the rent equals the price, then buy). ``FPI_PREDICTOR=compiled``
#: builds at once.
COMPILE_AFTER_ROWS: Final = 200_000
#: Rows per call of the compiled function when scoring on several threads.
_CHUNK: Final = 65_536
_SYMBOL: Final = "fpi_predict_raw"


# ---------------------------------------------------------------------------
# Reading the LightGBM text model
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tree:
    num_leaves: int
    split_feature: list[int]
    threshold: list[str]  # as written by LightGBM (round-trip decimal)
    decision_type: list[int]
    left: list[int]
    right: list[int]
    leaf_value: list[str]
    cat_boundaries: list[int]
    cat_threshold: list[int]
    #: training rows that reached each internal node and leaf (empty when not written)
    internal_count: list[float] = field(default_factory=list)
    leaf_count: list[float] = field(default_factory=list)

    def left_likely(self, node: int) -> bool | None:
        """Whether more training rows went left than right at ``node`` (None: unknown)."""
        def count(child: int) -> float | None:
            counts, i = (self.internal_count, child) if child >= 0 else (self.leaf_count, ~child)
            return counts[i] if i < len(counts) else None

        left, right = count(self.left[node]), count(self.right[node])
        return None if left is None or right is None else left >= right


@dataclass(frozen=True)
class _Model:
    num_class: int
    num_feature: int
    trees: list[_Tree]


def _ints(v: str) -> list[int]:
    return [int(t) for t in v.split()] if v else []


def _parse(text: str) -> _Model:
    """The trees of a LightGBM text model; ``ModelError`` for what this generator cannot do."""
    header, _, body = text.partition("\nTree=")
    head = dict(line.split("=", 1) for line in header.splitlines() if "=" in line)
    if "average_output" in header.splitlines():
        raise ModelError("average_output (random forest) models are not compiled")
    trees: list[_Tree] = []
    for block in ("Tree=" + body).split("\nTree=")[0:]:
        block = block.split("end of trees", 1)[0]
        kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "num_leaves" not in kv:
            continue
        if kv.get("is_linear", "0") != "0":
            raise ModelError("linear trees are not compiled")
        trees.append(_Tree(
            num_leaves=int(kv["num_leaves"]), split_feature=_ints(kv.get("split_feature", "")),
            threshold=kv.get("threshold", "").split(),
            decision_type=_ints(kv.get("decision_type", "")),
            left=_ints(kv.get("left_child", "")), right=_ints(kv.get("right_child", "")),
            leaf_value=kv["leaf_value"].split(),
            cat_boundaries=_ints(kv.get("cat_boundaries", "")),
            cat_threshold=_ints(kv.get("cat_threshold", "")),
            internal_count=[float(v) for v in kv.get("internal_count", "").split()],
            leaf_count=[float(v) for v in kv.get("leaf_count", "").split()],
        ))
    k = int(head.get("num_tree_per_iteration", head.get("num_class", "1")))
    if not trees or len(trees) % k:
        raise ModelError(f"{len(trees)} trees do not fill iterations of {k}")
    return _Model(num_class=k, num_feature=int(head["max_feature_idx"]) + 1, trees=trees)


# ---------------------------------------------------------------------------
# C code generation
# ---------------------------------------------------------------------------

_PRELUDE: Final = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
/* LightGBM: kZeroThreshold = 1e-35f; |v| <= it is read as 0 from dense input */
#define ZT ((double)1e-35f)
static inline int in_set(const uint32_t *bits, int n, double v) {
  /* CategoricalDecision: NaN, negative and out-of-int values go right (x86 cvttsd2si) */
  if (!(v > -1.0) || v >= 2147483648.0) return 0;
  int c = (int)v, i = c / 32;
  return i < n && ((bits[i] >> (c % 32)) & 1u);
}
"""


def _lit(s: str) -> str:
    """A LightGBM decimal as a C double literal (the compiler rounds it as strtod does)."""
    v = float(s)
    if not np.isfinite(v):
        return "INFINITY" if v > 0 else ("-INFINITY" if v < 0 else "NAN")
    out = repr(v)
    return out if any(c in out for c in ".e") else out + ".0"


def _condition(t: _Tree, node: int, tid: int, consts: list[str]) -> str:
    """C expression that is true when row ``x`` goes to the left child of ``node``."""
    f, dt = t.split_feature[node], t.decision_type[node]
    v = f"x[{f}]"
    if dt & 1:  # categorical: threshold indexes the bitset
        idx = int(float(t.threshold[node]))
        lo, hi = t.cat_boundaries[idx], t.cat_boundaries[idx + 1]
        name = f"c{tid}_{node}"
        words = ", ".join(f"{w}u" for w in t.cat_threshold[lo:hi])
        consts.append(f"static const uint32_t {name}[{max(hi - lo, 1)}] = {{{words or '0u'}}};")
        return f"in_set({name}, {hi - lo}, {v})"
    thr, missing = _lit(t.threshold[node]), (dt >> 2) & 3
    # One comparison each (NaN compares false): with missing type NaN, NaN goes the
    # default way; with None it is read as 0.0; with Zero, NaN and 0 go the default way.
    if missing == 2:
        go_left_on_nan = bool(dt & 2)
    elif missing == 1:
        return f"(!({v} > {thr}) || {v} == 0.0)" if dt & 2 else f"({v} <= {thr} && {v} != 0.0)"
    else:
        go_left_on_nan = float(t.threshold[node]) >= 0.0
    return f"!({v} > {thr})" if go_left_on_nan else f"({v} <= {thr})"


#: A tree's function is inlined into its block function (one loop over a block's rows).
_TREE_FN: Final = "static inline __attribute__((always_inline)) double"


def _tree_c(t: _Tree, tid: int, consts: list[str]) -> str:
    if t.num_leaves <= 1:
        leaf = _lit(t.leaf_value[0])
        return f"{_TREE_FN} t{tid}(const double *x) {{ (void)x; return {leaf}; }}"

    def node(i: int, depth: int) -> str:
        pad = "  " * depth
        if i < 0:
            return f"{pad}return {_lit(t.leaf_value[~i])};\n"
        cond, likely = _condition(t, i, tid, consts), t.left_likely(i)
        if likely is not None:  # the more travelled branch laid out first (same values)
            cond = f"__builtin_expect(!!({cond}), {int(likely)})"
        return (f"{pad}if ({cond}) {{\n"
                f"{node(t.left[i], depth + 1)}{pad}}} else {{\n"
                f"{node(t.right[i], depth + 1)}{pad}}}\n")

    return f"{_TREE_FN} t{tid}(const double *x) {{\n{node(0, 1)}}}"


def _block_c(tid: int, k: int, nf: int) -> str:
    """Tree ``tid`` added to the class sums ``o`` of ``m`` rows ``r`` (one call per block,
    not per row)."""
    return (f"static void b{tid}(const double *r, long m, double *o) {{\n"
            f"  for (long i = 0; i < m; ++i) o[i * {k}] += t{tid}(r + i * {nf});\n}}")


def generate_c(model_text: str) -> str:
    """C source of ``fpi_predict_raw(x, n, row_stride, col_stride, out)`` for a model."""
    m = _parse(model_text)
    consts: list[str] = []
    k, nf, nt = m.num_class, m.num_feature, len(m.trees)
    funcs = [f"{_tree_c(t, i, consts)}\n{_block_c(i, k, nf)}" for i, t in enumerate(m.trees)]
    table = ", ".join(f"b{i}" for i in range(nt))
    # Tree-major over a block of rows: one tree's code stays in the instruction cache
    # while it scores the block. Each row's class sums still add trees in model order.
    # The model's code is larger than the caches, so it is read from memory once per
    # block: blocks of 1,024 rows (a heap buffer) score about a sixth faster than 64
    # (measured on a 564-tree model; 4,096 no better, 16,384 much worse). The small
    # thread-local block serves short inputs, or a failed allocation.
    main = f"""
typedef void (*block_fn)(const double *, long, double *);
static const block_fn TREES[{nt}] = {{{table}}};
#define SMALL 64
#define BLOCK 1024
void {_SYMBOL}(const double *x, long n, long rs, long cs, double *out) {{
  static __thread double small[SMALL * {nf}];
  double *heap = n > SMALL ? malloc(sizeof(double) * BLOCK * {nf}) : NULL;
  double *r = heap ? heap : small;
  long block = heap ? BLOCK : SMALL;
  for (long b = 0; b < n; b += block) {{
    long m = n - b < block ? n - b : block;
    for (long i = 0; i < m; ++i) {{
      const double *row = x + (b + i) * rs;
      for (int j = 0; j < {nf}; ++j) {{
        double v = row[j * cs];
        r[i * {nf} + j] = (v >= -ZT && v <= ZT) ? 0.0 : v;
      }}
      for (int c = 0; c < {k}; ++c) out[(b + i) * {k} + c] = 0.0;
    }}
    for (int t = 0; t < {nt}; ++t) TREES[t](r, m, out + b * {k} + t % {k});
  }}
  free(heap);
}}
"""
    return "\n".join([_PRELUDE, *consts, *funcs, main])


# ---------------------------------------------------------------------------
# Compiling and caching
# ---------------------------------------------------------------------------

def _compiler() -> list[str] | None:
    cc = os.environ.get("CC") or "cc"
    parts = cc.split()
    return parts if parts and shutil.which(parts[0]) else None


def _compiler_id(cc: list[str]) -> str:
    res = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60,
                         check=False)
    return f"{shutil.which(cc[0])} {' '.join(cc[1:])}\n{res.stdout.strip()}"


# -O1: as fast as -O2 on these models (measured) at about half the compile time.
_FLAGS: Final = ("-O1", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-std=gnu99")


def _library_path(model_text: str) -> tuple[list[str], Path]:
    """The compiler and where its library of ``model_text`` is cached (built or not)."""
    cc = _compiler()
    if cc is None:
        raise ModelError("no C compiler (set CC or install cc)")
    key = hashlib.sha256("\0".join(
        (GENERATOR_VERSION, _compiler_id(cc), " ".join(_FLAGS), model_text)).encode()).hexdigest()
    return cc, files.cache_dir() / f"lgbm-{key[:32]}.so"


def is_cached(model_text: str) -> bool:
    """Whether the library of ``model_text`` is already built (False without a compiler)."""
    try:
        return _library_path(model_text)[1].is_file()
    except (ModelError, OSError, subprocess.SubprocessError):
        return False


def build_library(model_text: str) -> Path:
    """The compiled library for ``model_text``, from the cache or built now.

    Raises ``ModelError`` when there is no compiler or it fails.
    """
    cc, target = _library_path(model_text)
    if target.is_file():
        log.debug("compiled predictor: cache hit %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fpi-cc-") as tmp:
        src = Path(tmp) / "model.c"
        src.write_text(generate_c(model_text), encoding="utf-8")
        fd, part = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        try:
            res = subprocess.run([*cc, *_FLAGS, "-o", part, str(src), "-lm"],
                                 capture_output=True, text=True, timeout=600, check=False)
            if res.returncode != 0:
                raise ModelError(f"{cc[0]} failed: {res.stderr.strip()[:300]}")
            os.chmod(part, 0o644)
            os.replace(part, target)  # atomic: a concurrent build writes the same bytes
        finally:
            if os.path.exists(part):
                os.unlink(part)
    log.debug("compiled predictor: built %s", target)
    return target


# ---------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------

class CompiledPredictor:
    """Raw margins of one LightGBM model from its compiled library."""

    def __init__(self, library: Path, num_class: int, num_feature: int) -> None:
        self.library = library
        self.num_class = num_class
        self.num_feature = num_feature
        lib = ctypes.CDLL(str(library))
        fn = getattr(lib, _SYMBOL)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                       ctypes.c_void_p]
        self._lib, self._fn = lib, fn

    def _run(self, x: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
        rs, cs = (s // 8 for s in x.strides)
        self._fn(x.ctypes.data + lo * x.strides[0], hi - lo, rs, cs,
                 out.ctypes.data + lo * out.strides[0])

    def predict_raw(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """``(n, num_class)`` raw margins of the float64 matrix ``x`` (any layout)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.num_feature:
            raise ValueError(f"expected (n, {self.num_feature}) features, got {x.shape}")
        if x.strides[0] % 8 or x.strides[1] % 8:
            x = np.ascontiguousarray(x)
        n = x.shape[0]
        out = np.empty((n, self.num_class), dtype=np.float64)
        spans = list(itertools.pairwise([*range(0, n, _CHUNK), n]))
        if threads <= 1 or len(spans) <= 1:
            for lo, hi in spans:
                self._run(x, out, lo, hi)
        else:  # ctypes releases the GIL during the call
            with ThreadPoolExecutor(min(threads, len(spans))) as pool:
                list(pool.map(lambda s: self._run(x, out, *s), spans))
        return out


def probe_rows(model_text: str, n: int = 512, seed: int = 0) -> np.ndarray:
    """Rows that reach every kind of branch: NaN, 0, -0, tiny, each threshold and its
    neighbours, every category in a bitset and beyond."""
    m = _parse(model_text)
    cand: list[set[float]] = [{np.nan, 0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0} for _ in
                              range(m.num_feature)]
    numeric: list[list[float]] = [[] for _ in range(m.num_feature)]
    for t in m.trees:
        for i, f in enumerate(t.split_feature):
            if t.decision_type[i] & 1:
                idx = int(float(t.threshold[i]))
                words = t.cat_threshold[t.cat_boundaries[idx]:t.cat_boundaries[idx + 1]]
                cats = [32 * w + b for w, word in enumerate(words) for b in range(32)
                        if word >> b & 1]
                cand[f].update(float(c) for c in cats)
                cand[f].update((float(32 * len(words) + 3), 0.5, -0.5))
            else:
                numeric[f].append(float(t.threshold[i]))
    for f, thresholds in enumerate(numeric):  # each threshold and its neighbours
        thr = np.array(thresholds)
        cand[f].update([*thr, *np.nextafter(thr, np.inf), *np.nextafter(thr, -np.inf)])
    rng = np.random.default_rng(seed)
    x = np.empty((n, m.num_feature))
    for f, vals in enumerate(cand):
        arr = np.array(sorted(vals, key=lambda v: (np.isnan(v), v)))
        x[:, f] = arr[rng.integers(0, len(arr), n)]
    return x


# ---------------------------------------------------------------------------
# The hook used by fpi.model.bundle
# ---------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[lgb.Booster, CompiledPredictor | None] = (
    weakref.WeakKeyDictionary())
#: Rows each model has scored with LightGBM in this process, while not (yet) compiled.
_SCORED: weakref.WeakKeyDictionary[lgb.Booster, int] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def mode() -> str:
    """``FPI_PREDICTOR``: ``auto`` (default), ``compiled`` or ``lightgbm``."""
    value = os.environ.get(ENV_PREDICTOR, "auto").strip().lower() or "auto"
    if value not in ("auto", "compiled", "lightgbm"):
        raise ModelError(f"{ENV_PREDICTOR}={value!r}: use auto, compiled or lightgbm")
    return value


def compile_booster(booster: lgb.Booster, text: str | None = None) -> CompiledPredictor:
    """Build (or fetch from the cache) and verify the compiled predictor of ``booster``
    (``text``: its ``model_to_string()``, if the caller has it already).

    Raises ``ModelError`` when it cannot be built or its margins differ from LightGBM's.
    """
    text = booster.model_to_string() if text is None else text
    probe = probe_rows(text)  # parses the model: ModelError for what is not compiled
    pred = CompiledPredictor(build_library(text), booster.num_model_per_iteration(),
                             booster.num_feature())
    want = np.asarray(booster.predict(probe, raw_score=True)).reshape(len(probe), -1)
    got = pred.predict_raw(probe)
    if not np.array_equal(got, want):
        worst = float(np.nanmax(np.abs(got - want)))
        raise ModelError(f"compiled margins differ from LightGBM's (max {worst:g})")
    return pred


def _text_if_worth_compiling(booster: lgb.Booster, how: str, rows: int) -> str | None:
    """Rent or buy (:data:`COMPILE_AFTER_ROWS`): the model text once this process has
    scored enough rows with ``booster``, at once when forced or when its library is
    already cached; None while LightGBM should go on scoring."""
    if how == "compiled":
        return booster.model_to_string()
    scored, text = _SCORED.get(booster), None
    if scored is None:  # first call: a cached library costs nothing to use
        text = booster.model_to_string()
        if is_cached(text):
            return text
        scored = 0
    _SCORED[booster] = scored + rows
    if scored + rows < COMPILE_AFTER_ROWS:
        return None
    return booster.model_to_string() if text is None else text


def _predictor(booster: lgb.Booster, how: str, rows: int) -> CompiledPredictor | None:
    with _LOCK:
        if booster in _CACHE:
            return _CACHE[booster]
        text = _text_if_worth_compiling(booster, how, rows)
        if text is None:
            return None
        try:
            pred: CompiledPredictor | None = compile_booster(booster, text)
        except (ModelError, OSError, subprocess.SubprocessError, ValueError) as exc:
            if how == "compiled":
                raise ModelError(f"compiled predictor unavailable: {exc}") from exc
            log.debug("compiled predictor unavailable, using LightGBM: %s", exc)
            pred = None
        _CACHE[booster] = pred
        return pred


def prepare(booster: lgb.Booster) -> None:
    """Fetch and verify ``booster``'s compiled predictor now when its first
    :func:`raw_margins` call would (its library is cached, or ``FPI_PREDICTOR=compiled``):
    for a caller that can do it beside other work (e.g. on a thread while it reads its
    input). Anything that fails is left for that first call to meet again."""
    try:
        how = mode()
        if how != "lightgbm":
            _predictor(booster, how, 0)
    except Exception as exc:  # the first raw_margins call meets it again
        log.debug("compiled predictor not prepared: %s", exc)


def raw_margins(booster: lgb.Booster, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``booster.predict(x, raw_score=True)`` as ``(n, k)``, from the compiled predictor
    when it is available and verified (identical values), else from LightGBM."""
    how = mode()
    pred = None if how == "lightgbm" else _predictor(booster, how, len(x))
    if pred is None:
        out = np.asarray(booster.predict(x, raw_score=True))
        return out.reshape(len(x), -1) if out.ndim == 1 else out
    if threads is None:  # a task on a pool thread: its share of the cores
        from fpi.engine import available_cores, task_threads

        threads = task_threads() or available_cores()
    return pred.predict_raw(x, threads=threads)


def forget(booster: lgb.Booster | None = None) -> None:
    """Drop remembered predictors (all, or ``booster``'s): for tests."""
    with _LOCK:
        if booster is None:
            _CACHE.clear()
            _SCORED.clear()
        else:
            _CACHE.pop(booster, None)
            _SCORED.pop(booster, None)
