"""``ptnp batch``: analyse many maps on a Dask cluster (see :mod:`ptnp_gpu.batch`).

Exit status: 0 when every map has a result, 1 when some map failed (listed in
``OUT/failures.csv``), 2 for a bad invocation (missing input, bad option).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import InputError

EPILOG = """\
examples:
  ptnp batch maps/ --out results/                 # every map in maps/, local cluster
  ptnp batch list.txt a.mrc --out results/ --element Au --workers 2
  ptnp batch maps/ --out results/ --scheduler tcp://head:8786
  ptnp batch maps/ --out results/ --min-cn 2 --no-split   # analyze's options

Re-running the same command skips maps whose results are complete and match
(checksum, parameters, version). Exit status: 0 all maps analysed, 1 some map
failed (see OUT/failures.csv), 2 bad invocation."""


# options whose values are words, one of them "none" (the word, not Python's None)
_WORD_OPTIONS = ("blur_correction", "fit_baseline", "depth", "whiten", "ladder_whiten", "deblur", "correlation_rule")


def _parse_opt(text: str):
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise InputError(f"--opt expects KEY=VALUE with KEY a Python name, got {text!r}")
    low = value.strip().lower()
    if key in _WORD_OPTIONS:
        return key, value.strip()
    if low in ("true", "false", "none", "null"):
        return key, {"true": True, "false": False}.get(low)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def register(subparsers) -> None:
    from .cli_detect import add_map_options
    analyze_opts = argparse.ArgumentParser(add_help=False)
    add_map_options(analyze_opts)          # --element, --voxel-size, --backend and the knobs
    p = subparsers.add_parser(
        "batch", help="analyse many maps on a Dask cluster (resumable)", parents=[analyze_opts],
        conflict_handler="resolve",
        description="Run analyze on every map of INPUTS (maps, folders, text lists of paths), "
                    "one result folder per map in OUT, plus OUT/particles.csv/.parquet/.png, "
                    "OUT/failures.csv and OUT/manifest.json. Analysis options are those of analyze.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="map file (.mrc/.map/.ccp4/.rec), folder of maps, or text file listing them")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="batch output folder")
    p.add_argument("--force", action="store_true",
                   help="redo every map, even those with complete results")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run_analyze option (repeatable; VALUE is JSON or a string)")
    c = p.add_argument_group("cluster")
    c.add_argument("--scheduler", metavar="ADDRESS",
                   help="use a running Dask scheduler (e.g. tcp://host:8786) instead of a local cluster")
    c.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local workers (default: one per CPU core, sharing the GPUs with at most one per 8 GiB "
                        "of device memory and 16 per GPU; without a GPU one per core)")
    c.add_argument("--gpus", default="auto", metavar="auto|none|IDS",
                   help="CUDA devices for local workers: auto (default; none with --backend numpy), "
                        "none (CPU only), or a comma list such as 0,1")
    c.add_argument("--retries", type=int, default=2,
                   help="retries of a map after a crash or worker death (default: 2)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also redo maps that failed with an input error in an earlier run")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    p.set_defaults(func=run)


def run(args) -> int:
    from .batch import run_batch
    from .cli_detect import pipeline_kwargs
    opts = dict(_parse_opt(t) for t in args.opt)
    reserved = {"element", "voxel_size_A", "out_dir", "force", "quiet", "map_path",
                "progress"} & set(opts)
    if reserved:
        raise InputError(f"--opt cannot set {', '.join(sorted(reserved))}: the batch sets it "
                         "(use --element, --voxel-size, --out, --force)")
    knobs = {k: v for k, v in pipeline_kwargs(args).items() if v is not None and k not in
             ("out_dir", "element", "voxel_size_A", "force", "quiet")}
    opts = {**knobs, **opts}
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    gpus = args.gpus.strip().lower()
    if gpus == "auto" and opts.get("backend") == "numpy":
        gpus = "none"
    if gpus not in ("auto", "none"):
        gpus = [d.strip() for d in args.gpus.split(",") if d.strip()]
        if not gpus:
            raise InputError("--gpus expects auto, none or device ids such as 0,1")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="ptnp batch: %(message)s")
        for h in logging.getLogger().handlers:
            h.setLevel(logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)  # worker restarts are expected
    res = run_batch(args.inputs, args.out, element=args.element, voxel_size_A=args.voxel_size,
                    opts=opts, scheduler=args.scheduler, n_workers=args.workers, gpus=gpus,
                    retries=args.retries, retry_failed=args.retry_failed, recursive=args.recursive,
                    force=args.force, progress=not args.quiet)
    print(f"{res.n_maps} maps: {res.n_analysed} analysed, {res.n_skipped} skipped (unchanged), "
          f"{res.n_failed} failed; {len(res.rows)} particles in {res.out_dir / 'particles.csv'} "
          f"({res.elapsed_s:.1f} s)")
    if res.failures:
        print(f"failures listed in {res.out_dir / 'failures.csv'}", file=sys.stderr)
        return 1
    return 0
