"""Micro-benchmark of heartjax.conv implementations against the machine's float32 matmul peak.

    python -m experiments.bench.conv [--repeats N] [--json FILE] [--sections layers,chain,2d,upsample] [--quick]

Variants: every conv impl of --impls ("xla", "planes"; also "planes-plain", "planes" without materialised
gradient inputs, for A/B timings: heartjax.conv.BENCH_IMPLS), and each once more compiled with
heartjax.conv.compiler_options() ("+eigen": XLA:CPU keeps convolutions off YNNPACK and gives it only
reductions). Rows: (a) single 3x3x3 layers at the reference U-Net's sizes, (b) a chain with the reference
U-Net's conv work (features 16-32-64-128, stride-2 convs down, 1x1 conv + nearest upsampling + skip concat up,
ReLU, no norm; batch 2 x 64^3, 8 classes), (c) 2D layers at batch 32, (d) nearest upsampling x2 of
2 x 32^3 x 32: heartjax.conv.upsample vs jnp.repeat vs jax.image.resize.
Per row and variant: forward and forward+backward (layers: gradients w.r.t. input and kernel; chain: w.r.t.
the weights, as in training), median / min / max of --repeats calls after a warm-up, each ended by
block_until_ready, variants alternating within a repeat. GFLOP/s use the analytic count (2 * outputs * k^d *
C_in * C_out per conv; backward = 2x forward) and the median time; "peak" is a 4096^2 float32 matmul measured
before and after (best median). Other processes on the machine make timings noisy: compare medians together
with their spread, and the min as the least disturbed call.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from heartjax import conv as conv_lib
from heartjax.common.atomic import write_json

# (batch, input size, C_in, C_out[, stride])
REF_LAYERS = [(2, 64, 1, 16), (2, 64, 16, 16), (2, 64, 16, 32, 2), (2, 32, 32, 32), (2, 16, 64, 64), (2, 8, 128, 128)]
REF_2D = [(32, 128, 1, 16), (32, 128, 16, 16), (32, 128, 16, 32, 2), (32, 64, 32, 32), (32, 32, 64, 64)]
QUICK_LAYERS, QUICK_2D = [(1, 8, 4, 4)], [(2, 16, 4, 4)]


def timed(fn, *args) -> float:
    """Wall seconds of one call, ended by block_until_ready."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def stats(ts: list[float]) -> dict:
    """Median, min and max of a list of seconds."""
    return {"s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}


def matmul_peak(n: int, repeats: int) -> dict:
    """float32 n x n matmul: median seconds and GFLOP/s."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, a))
    s = stats([timed(f, a, a) for _ in range(repeats)])
    return {**s, "gflops": 2 * n**3 / s["s"] / 1e9}


def variants(impls) -> list[tuple[str, str, dict]]:
    """(label, impl, compiler_options) for each impl, plain and with YNNPACK convolutions off."""
    extra = conv_lib.compiler_options()
    out = [(i, i, {}) for i in impls]
    return out + ([(f"{i}+eigen", i, extra) for i in impls] if extra else [])


def layer_fns(impl: str, opts: dict, strides=1):
    """Jitted forward and forward+backward (loss value and grads w.r.t. x and w) of one conv layer."""
    f = lambda x, w: conv_lib.conv(x, w, strides=strides, impl=impl)
    # value_and_grad: a conv is linear, so jax.grad alone would let XLA drop the forward pass
    loss = lambda x, w, ct: jnp.vdot(f(x, w), ct)
    return (jax.jit(f, compiler_options=opts),
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), compiler_options=opts))


def chain_spec(feats=(16, 32, 64, 128), cin=1, classes=8):
    """Kernel shapes and strides of the reference U-Net's convs, in call order (see chain_apply)."""
    enc, c = [], cin
    for i, f in enumerate(feats):
        enc += [((3, 3, 3, c, f), 2 if i else 1), ((3, 3, 3, f, f), 1)]
        c = f
    dec = []
    for f in reversed(feats[:-1]):
        dec += [((1, 1, 1, c, f), 1), ((3, 3, 3, 2 * f, f), 1), ((3, 3, 3, f, f), 1)]
        c = f
    return enc + dec + [((1, 1, 1, c, classes), 1)]


def chain_apply(ws, x, impl: str, n_stages: int):
    """The reference U-Net's conv work: conv+ReLU encoder, stride-2 downsampling, 1x1 conv + upsample + concat up."""
    cv = lambda h, w, s=1: conv_lib.conv(h, w, strides=s, impl=impl)
    it = iter(ws)
    skips = []
    for i in range(n_stages):
        x = jax.nn.relu(cv(x, next(it), 2 if i else 1))
        x = jax.nn.relu(cv(x, next(it)))
        skips.append(x)
    skips.pop()
    for _ in range(n_stages - 1):
        x = jnp.concatenate([skips.pop(), conv_lib.upsample(cv(x, next(it)), 2)], -1)
        x = jax.nn.relu(cv(x, next(it)))
        x = jax.nn.relu(cv(x, next(it)))
    return cv(x, next(it))


def conv_flops(fn, *args) -> float:
    """Forward FLOPs of every convolution that fn traces with impl "xla": 2 * outputs * window * C_in."""
    total = 0.0
    eqns = list(jax.make_jaxpr(fn)(*args).jaxpr.eqns)
    while eqns:
        e = eqns.pop()
        if e.primitive.name == "conv_general_dilated":
            rhs = e.invars[1].aval.shape  # [*kernel, C_in, C_out] (channels-last dimension numbers)
            total += 2 * math.prod(e.outvars[0].aval.shape) * math.prod(rhs[:-1])
        for v in e.params.values():  # nested jaxprs (pjit, custom_vjp)
            inner = getattr(v, "jaxpr", None)
            eqns += list(getattr(inner, "eqns", None) or getattr(v, "eqns", []) or [])
    return total


def run_rows(rows, vs, repeats: int, peak: float, log) -> list[dict]:
    """Time every (row, variant): forward and forward+backward, variants alternating within each repeat."""
    results = []
    for name, args, flops, make, *own in rows:  # a row may bring its own variants (upsample methods)
        fns = {label: make(impl, opts) for label, impl, opts in (own[0] if own else vs)}
        for fwd, bwd in fns.values():  # compile + warm up
            jax.block_until_ready(fwd(*args[:2]))
            jax.block_until_ready(bwd(*args))
        times = {label: {"fwd": [], "fwd_bwd": []} for label in fns}
        for r in range(repeats):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]
            for label in order:
                fwd, bwd = fns[label]
                times[label]["fwd"].append(timed(fwd, *args[:2]))
                times[label]["fwd_bwd"].append(timed(bwd, *args))
        for label, t in times.items():
            row = {"row": name, "variant": label, "gflop_fwd": flops / 1e9}
            for kind, mult in (("fwd", 1), ("fwd_bwd", 3)):
                s = stats(t[kind])
                gf = mult * flops / s["s"] / 1e9  # 0 for rows without FLOPs (upsampling)
                row[kind] = {**s, "gflops": gf, "share_of_peak": gf / peak}
            results.append(row)
            log(row)
    return results


def layer_rows(layers, dims: int):
    """Rows of single 3x3(x3) conv layers: (name, (x, w, cotangent), forward FLOPs, fn factory)."""
    rows = []
    for b, s, cin, cout, *stride in layers:
        st = stride[0] if stride else 1
        rng = np.random.default_rng(s * cin + cout)  # numpy: jax.random compiles slowly on the CPU
        x = jnp.asarray(rng.standard_normal((b, *(s,) * dims, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((*(3,) * dims, cin, cout), np.float32) * (2 / (3**dims * cin)) ** 0.5)
        ct = jnp.asarray(rng.standard_normal((b, *(s // st,) * dims, cout), np.float32))
        flops = 2 * b * (s // st) ** dims * 3**dims * cin * cout
        name = f"{dims}d {b}x{s}^{dims} {cin}->{cout}" + (f" s{st}" if st > 1 else "")
        rows.append((name, (x, w, ct), flops, lambda impl, opts, st=st: layer_fns(impl, opts, st)))
    return rows


UPSAMPLERS = {
    "broadcast": lambda x: conv_lib.upsample(x, 2),
    "repeat": lambda x: jnp.repeat(jnp.repeat(jnp.repeat(x, 2, 1), 2, 2), 2, 3),
    "resize": lambda x: jax.image.resize(x, (x.shape[0], *(2 * n for n in x.shape[1:4]), x.shape[4]), "nearest"),
}


def upsample_row(shape):
    """heartjax.conv.upsample (broadcast + reshape) against jnp.repeat and jax.image.resize, factor 2 in 3D."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    ct = jnp.asarray(rng.standard_normal((shape[0], *(2 * n for n in shape[1:4]), shape[4]), np.float32))

    def make(method, opts):
        f = lambda x, ct: UPSAMPLERS[method](x)
        loss = lambda x, ct: jnp.vdot(f(x, ct), ct)
        return jax.jit(f), jax.jit(jax.value_and_grad(loss))

    name = f"upsample x2 {shape[0]}x{shape[1]}^3x{shape[4]}"
    return [(name, (x, ct), 0.0, make, [(m, m, {}) for m in UPSAMPLERS])]


def chain_row(size: int, batch: int, feats):
    """The reference U-Net conv chain as one row."""
    spec = chain_spec(feats)
    rng = np.random.default_rng(1)
    ws = [jnp.asarray(rng.standard_normal(shape, np.float32) * (2 / math.prod(shape[:-1])) ** 0.5)
          for shape, _ in spec]
    x = jnp.asarray(rng.standard_normal((batch, size, size, size, 1), np.float32))

    def make(impl, opts):
        f = lambda ws, x: chain_apply(ws, x, impl, len(feats))
        loss = lambda ws, x: jnp.mean(jnp.square(f(ws, x)))
        return jax.jit(f, compiler_options=opts), jax.jit(jax.value_and_grad(loss), compiler_options=opts)

    name = f"chain {batch}x{size}^3 {'-'.join(map(str, feats))}"
    flops = conv_flops(lambda ws, x: chain_apply(ws, x, "xla", len(feats)), ws, x)
    return [(name, (ws, x), flops, make)]


def print_table(results, peak):
    """Plain-text table: one line per (row, variant)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nfloat32 matmul peak: {peak:.0f} GFLOP/s   (times: median [min-max] ms; 1-min load average {load:.1f} "
          f"on {os.cpu_count()} cores: other processes make timings noisy)")
    head = f"{'GF/s':>6s} {'peak':>5s}"
    print(f"{'row':30s} {'variant':13s} {'fwd ms':>22s} {head} {'fwd+bwd ms':>24s} {head}")
    for r in results:
        cells = []
        for kind in ("fwd", "fwd_bwd"):
            s = r[kind]
            cells.append(f"{s['s'] * 1e3:8.1f} [{s['min_s'] * 1e3:.0f}-{s['max_s'] * 1e3:.0f}] {s['gflops']:6.1f} "
                         f"{s['share_of_peak']:5.0%}")
        print(f"{r['row']:30s} {r['variant']:13s} {cells[0]:>35s} {cells[1]:>37s}")


def main(argv=None) -> dict:
    """Run the benchmark; print a table; optionally write JSON. Returns the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--sections", default="layers,chain,2d,upsample",
                   help="comma list of layers, chain, 2d, upsample")
    p.add_argument("--impls", default="xla,planes",
                   help="comma list of heartjax.conv impls (IMPLS, or BENCH_IMPLS for A/B variants)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test; numbers mean nothing)")
    args = p.parse_args(argv)
    sections = args.sections.split(",")
    impls = args.impls.split(",")
    bad = [i for i in impls if i not in conv_lib.IMPLS + conv_lib.BENCH_IMPLS]
    if bad:
        p.error(f"--impls: unknown {', '.join(bad)}; choose from {', '.join(conv_lib.IMPLS + conv_lib.BENCH_IMPLS)}")
    vs = variants(impls)
    n_peak = 256 if args.quick else 4096
    peak0 = matmul_peak(n_peak, args.repeats)
    rows = []
    if "layers" in sections:
        rows += layer_rows(QUICK_LAYERS if args.quick else REF_LAYERS, 3)
    if "chain" in sections:
        rows += chain_row(16, 1, (4, 8)) if args.quick else chain_row(64, 2, (16, 32, 64, 128))
    if "2d" in sections:
        rows += layer_rows(QUICK_2D if args.quick else REF_2D, 2)
    if "upsample" in sections:
        rows += upsample_row((1, 4, 4, 4, 2) if args.quick else (2, 32, 32, 32, 32))
    log = lambda r: print(f"  {r['row']:30s} {r['variant']:13s} fwd {r['fwd']['s'] * 1e3:8.1f} ms  "
                          f"fwd+bwd {r['fwd_bwd']['s'] * 1e3:8.1f} ms", flush=True)
    results = run_rows(rows, vs, args.repeats, peak0["gflops"], log)
    peak1 = matmul_peak(n_peak, args.repeats)
    peak = max(peak0["gflops"], peak1["gflops"])
    for r in results:  # shares against the better of the two peak measurements
        for kind in ("fwd", "fwd_bwd"):
            r[kind]["share_of_peak"] = r[kind]["gflops"] / peak
    print_table(results, peak)
    out = {"backend": jax.default_backend(), "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS"),
           "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "repeats": args.repeats,
           "matmul_peak": {"n": n_peak, "before": peak0, "after": peak1, "gflops": peak}, "results": results}
    if args.json:
        write_json(args.json, out, indent=1)
    return out


if __name__ == "__main__":
    main()
