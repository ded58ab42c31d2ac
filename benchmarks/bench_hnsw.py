"""HNSW benchmark: ecomllm.HNSWIndex vs hnswlib vs FAISS IndexHNSWFlat, ann-benchmarks style.

Protocol (as ann-benchmarks): k=10, one query per call, single thread, best of --runs runs per
setting, QPS = queries / best wall time, recall = fraction of returned ids whose true distance is
<= the true 10th distance + 1e-3 (ann-benchmarks "k-nn" recall). ef is swept for every library;
QPS at recall r is the best QPS among the settings reaching r (the Pareto frontier), null if none.

Datasets (synthetic Gaussian clusters, like embeddings of a catalogue):
  clustered-128-l2      200,000 x 128, squared L2
  clustered-384-cosine  100,000 x 384, cosine
All libraries get the same M and ef_construction. Build time is measured with 1 and 2 threads.
Memory per vector: the RSS growth of this process while building (all libraries) and, for
ecomllm, the index's own byte count.
Filtered search: 1% of the ids allowed (random), ours with a numpy id filter (evaluated in C++)
vs hnswlib's Python-callback filter (`filter=lambda label: label in allowed`), one query per call.

hnswlib should be compiled for this CPU: `pip install --no-binary hnswlib --force-reinstall
--no-deps hnswlib` (its setup.py adds -march=native unless HNSWLIB_NO_NATIVE is set).

Usage: python benchmarks/bench_hnsw.py --json            (full run; about 15 minutes on 2 cores)
       python benchmarks/bench_hnsw.py --json --quick    (20k / 10k points, a smoke run)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from ecomllm import HNSWIndex, cpu_info  # noqa: E402

K = 10
TARGETS = (0.90, 0.95, 0.99)
EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def clustered(n, dim, queries, seed):
    rng = np.random.default_rng(seed)
    clusters = max(16, n // 1000)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32) * 2.0
    x = centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim)).astype(np.float32)
    q = centers[rng.integers(0, clusters, queries)] + rng.normal(size=(queries, dim)).astype(np.float32)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(q, np.float32)


def true_distances(metric, q, x):
    """[Q, N] distances in the libraries' convention (squared L2; 1 - cos)."""
    if metric == "l2":
        return (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 1 - qn @ xn.T


def ground_truth(metric, q, x, allowed=None):
    """Sorted true top-k distances per query (over `allowed` rows when given)."""
    out = np.empty((len(q), K), np.float64)
    xs = x if allowed is None else x[allowed]
    for b in range(0, len(q), 100):
        d = true_distances(metric, q[b : b + 100].astype(np.float64), xs.astype(np.float64))
        out[b : b + 100] = np.sort(np.partition(d, K - 1, axis=1)[:, :K], axis=1)
    return out


def knn_recall(metric, q, x, ids, gt):
    """ann-benchmarks k-nn recall: returned ids within the true k-th distance + 1e-3."""
    hits = 0
    for i in range(len(q)):
        found = ids[i][ids[i] >= 0]
        if len(found):
            d = true_distances(metric, q[i : i + 1].astype(np.float64), x[found].astype(np.float64))[0]
            hits += int((d <= gt[i, -1] + 1e-3).sum())
    return hits / gt.size


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- library adapters: build(x, threads) and a per-query search ----------------------------------
class Ours:
    name = "ecomllm"

    def __init__(self, metric, dim, M, efc):
        self.metric, self.dim, self.M, self.efc = metric, dim, M, efc

    def build(self, x, threads):
        self.idx = HNSWIndex(self.dim, metric=self.metric, M=self.M, ef_construction=self.efc, max_elements=len(x))
        self.idx.add(x, num_threads=threads)

    def set_ef(self, ef):
        self.ef = ef

    def query(self, v):
        return self.idx.search(v, k=K, ef=self.ef, num_threads=1)[0]

    def filtered_query(self, v, allowed):
        return self.idx.search(v, k=K, ef=self.ef, filter=allowed, num_threads=1)[0]

    def own_bytes(self):
        return self.idx.memory_bytes


class Hnswlib:
    name = "hnswlib"

    def __init__(self, metric, dim, M, efc):
        import hnswlib

        self.lib, self.metric, self.dim, self.M, self.efc = hnswlib, metric, dim, M, efc

    def build(self, x, threads):
        self.idx = self.lib.Index(space=self.metric, dim=self.dim)
        self.idx.init_index(max_elements=len(x), M=self.M, ef_construction=self.efc, random_seed=100)
        self.idx.add_items(x, num_threads=threads)
        self.idx.set_num_threads(1)

    def set_ef(self, ef):
        self.idx.set_ef(ef)

    def query(self, v):
        return self.idx.knn_query(v[None], k=K, num_threads=1)[0][0].astype(np.int64)

    def filtered_query(self, v, allowed_set):
        return self.idx.knn_query(v[None], k=K, num_threads=1, filter=lambda label: label in allowed_set)[0][0].astype(
            np.int64
        )


class Faiss:
    name = "faiss"

    def __init__(self, metric, dim, M, efc):
        import faiss

        self.lib, self.metric, self.dim, self.M, self.efc = faiss, metric, dim, M, efc

    def _prep(self, x):
        if self.metric == "cosine":
            x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return np.ascontiguousarray(x, np.float32)

    def build(self, x, threads):
        f = self.lib
        measure = f.METRIC_L2 if self.metric == "l2" else f.METRIC_INNER_PRODUCT
        self.idx = f.IndexHNSWFlat(self.dim, self.M, measure)
        self.idx.hnsw.efConstruction = self.efc
        f.omp_set_num_threads(threads)
        self.idx.add(self._prep(x))
        f.omp_set_num_threads(1)

    def set_ef(self, ef):
        self.idx.hnsw.efSearch = ef

    def query(self, v):
        return self.idx.search(self._prep(v[None]), K)[1][0]


def time_queries(fn, queries, runs):
    best, out = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        res = [fn(v) for v in queries]
        best = min(best, time.perf_counter() - t)
        out = res
    return len(queries) / best, np.array(out)


def frontier(points):
    """{target: best QPS among settings with recall >= target}."""
    out = {}
    for r in TARGETS:
        ok = [p["qps"] for p in points if p["recall"] >= r]
        out[f"{r:.2f}"] = round(max(ok), 1) if ok else None
    return out


def bench_dataset(name, n, dim, metric, nq, M, efc, runs, libs, quick):
    x, q = clustered(n, dim, nq, seed=dim)
    gt = ground_truth(metric, q, x)
    res = {"n": n, "dim": dim, "metric": metric, "queries": nq, "M": M, "ef_construction": efc,
           "build_s": {}, "build_s_2threads": {}, "memory_bytes_per_vector": {}, "qps_at_recall": {}, "sweep": {}}
    adapters = {}
    for cls in libs:
        try:
            lib = cls(metric, dim, M, efc)
        except ImportError as e:
            res["build_s"][cls.name] = f"unavailable: {e}"
            continue
        lib.build(x[: min(2000, n)], 1)  # warm-up (page-in, thread pool)
        lib.idx = None
        gc.collect()
        for threads in (2, 1):  # the 1-thread build is the one kept for the query sweep
            gc.collect()
            before = rss_bytes()
            t = time.perf_counter()
            lib.build(x, threads)
            secs = time.perf_counter() - t
            res["build_s_2threads" if threads == 2 else "build_s"][lib.name] = round(secs, 2)
            if threads == 2:  # the first full build: later ones reuse the memory it freed
                grown = rss_bytes() - before
                lib.idx = None
        mem = {"rss_growth": round(grown / n, 1)}
        if hasattr(lib, "own_bytes"):
            mem["index_bytes"] = round(lib.own_bytes() / n, 1)
        res["memory_bytes_per_vector"][lib.name] = mem
        sweep = []
        for ef in EF_SWEEP:
            lib.set_ef(ef)
            qps, ids = time_queries(lib.query, q, runs)
            rec = knn_recall(metric, q, x, ids, gt)
            sweep.append({"ef": ef, "recall": round(rec, 4), "qps": round(qps, 1)})
            if rec >= 0.999:
                break
        res["sweep"][lib.name] = sweep
        res["qps_at_recall"][lib.name] = frontier(sweep)
        adapters[lib.name] = lib
        print(f"[{name}] {lib.name}: build {res['build_s'][lib.name]}s (2t {res['build_s_2threads'][lib.name]}s) "
              f"{res['qps_at_recall'][lib.name]}", file=sys.stderr)
    ours, ref = res["qps_at_recall"].get("ecomllm", {}), res["qps_at_recall"].get("hnswlib", {})
    res["qps_ratio_vs_hnswlib_at_0.95"] = (
        round(ours["0.95"] / ref["0.95"], 3) if ours.get("0.95") and ref.get("0.95") else None
    )
    if "ecomllm" in adapters and "hnswlib" in adapters:
        res["filtered_1pct"] = bench_filtered(adapters, x, q, metric, runs, quick)
    return res


def bench_filtered(adapters, x, q, metric, runs, quick):
    rng = np.random.default_rng(5)
    allowed = np.sort(rng.choice(len(x), len(x) // 100, replace=False)).astype(np.int64)
    allowed_set = set(allowed.tolist())
    gt = ground_truth(metric, q, x, allowed)
    nq = min(len(q), 100 if quick else 200)  # the callback filter is slow: fewer queries
    out = {"selectivity": 0.01, "allowed": int(len(allowed)), "ef": 64, "queries": nq}
    for name, arg in (("ecomllm", allowed), ("hnswlib", allowed_set)):
        lib = adapters[name]
        lib.set_ef(64)
        qps, ids = time_queries(lambda v: lib.filtered_query(v, arg), q[:nq], max(1, runs - 1))
        out[name] = {"qps": round(qps, 1), "recall": round(knn_recall(metric, q[:nq], x, ids, gt[:nq]), 4)}
    out["qps_ratio_vs_hnswlib"] = round(out["ecomllm"]["qps"] / out["hnswlib"]["qps"], 1)
    return out


def hnswlib_build_flags():
    """Which hnswlib binary ran. Its kernels are chosen at compile time (-march=native when built
    from source), so they match this CPU's instructions only if it was compiled here: see README."""
    try:
        import hnswlib

        return {"module": hnswlib.__file__, "cpu_avx512": bool(cpu_info().get("avx512f"))}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default output anyway)")
    ap.add_argument("--quick", action="store_true", help="small smoke run (20k / 10k points, 200 queries)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per setting (best is kept)")
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--libs", default="ecomllm,hnswlib,faiss")
    args = ap.parse_args()
    runs = args.runs or (2 if args.quick else 3)
    nq = 200 if args.quick else 1000
    chosen = [c for c in (Ours, Hnswlib, Faiss) if c.name in args.libs.split(",")]
    sizes = {"clustered-128-l2": (20000 if args.quick else 200000, 128, "l2"),
             "clustered-384-cosine": (10000 if args.quick else 100000, 384, "cosine")}
    result = {
        "benchmark": "hnsw",
        "protocol": "ann-benchmarks: k=10, one query per call, 1 thread, best of runs, k-nn recall (eps 1e-3)",
        "quick": args.quick,
        "runs": runs,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), **cpu_info()},
        "hnswlib": hnswlib_build_flags(),
        "datasets": {},
    }
    for name, (n, dim, metric) in sizes.items():
        result["datasets"][name] = bench_dataset(name, n, dim, metric, nq, args.M, args.ef_construction, runs, chosen,
                                                 args.quick)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
