"""The command-line side of ``lssr diagnose`` and ``lssr recommend``: their options (one spelling with the Python
call's option objects, :mod:`lssr.diagnostics.options`) and their command bodies, which call
:mod:`lssr.cli_diagnose` (imported inside the command, so that ``lssr --help`` never imports torch).
"""

from __future__ import annotations

import argparse

from .io import out_folder as _out_folder


def cmd_diagnose(args: argparse.Namespace) -> None:
    from .cli_diagnose import diagnose_options, parse_model_args, run_diagnose
    from .training import resolve_device

    res = run_diagnose(
        model=args.model,
        model_args=parse_model_args(args.model_arg),
        checkpoint=args.checkpoint,
        data=args.data,
        loss=args.loss,
        batch_sizes=args.batch_sizes,
        out=_out_folder(args.out),
        split=args.split,
        resize=args.resize,
        device=str(resolve_device(args.device)),
        dtype=args.dtype,
        replacement=args.replacement,
        **diagnose_options(args),
    )
    cols = ["b", "tr_S_b", "tr_HS_b", "tr_HS_b_se", "ias_b", "ias_b_se", "rho_b", "instability_b"]
    print(f"n={res.n} m={res.m} loss={res.loss:.6g} ‖H‖={res.top_eig:.6g} B_simple={res.b_simple:.6g} "
          f"({res.cost.hvps} HVPs, {res.cost.seconds:.1f}s, hvp mode {res.cost.hvp_mode})")  # fmt: skip
    print(res.frame()[cols].to_string(index=False))
    print(f"wrote {args.out}/diagnostics.csv and diagnostics.json")


def cmd_recommend(args: argparse.Namespace) -> None:
    from .cli_diagnose import diagnose_options, parse_model_args, run_recommend
    from .training import resolve_device

    options = {**diagnose_options(args), "eigen": False}  # the ceiling needs tr(H S_b), not ‖H‖
    rec = run_recommend(
        b_ref=args.b_ref,
        lr_ref=args.lr_ref,
        batch_sizes=args.batch_sizes,
        out=_out_folder(args.out),
        diagnostics=args.diagnostics,
        monitor_log=args.monitor_log,
        model=args.model,
        model_args=parse_model_args(args.model_arg),
        checkpoints=args.checkpoint,
        data=args.data,
        loss=args.loss,
        split=args.split,
        resize=args.resize,
        device=str(resolve_device(args.device)) if not (args.diagnostics or args.monitor_log) else "cpu",
        dtype=args.dtype,
        replacement=args.replacement,
        momentum=args.momentum,
        optimizer=args.optimizer,
        level=args.level,
        n_train=args.n_train,
        **options,
    )
    print(f"B_simple = {rec.b_simple:.4g} ({rec.level:.0%}: {rec.b_simple_lo:.4g} to {rec.b_simple_hi:.4g}), "
          f"reference b = {rec.b_ref}, η = {rec.lr_ref:g}, N = {rec.n}, "
          f"{'with' if rec.replacement else 'without'} replacement, momentum {rec.momentum:g}")  # fmt: skip
    print(rec.frame().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {args.out}/recommendation.csv, recommendation.json and recommendation.png")


def add_model_data_options(a, required: bool = True, several: bool = False) -> None:
    """The model, data and measurement options of `lssr diagnose` (shared by `lssr recommend`)."""
    # fmt: off
    a("--model", required=required, metavar="MODULE:FUNCTION",
      help="model factory, e.g. torchvision.models:resnet18 or lssr.models:build_model (importable from PYTHONPATH)")
    a("--model-arg", action="append", default=[], metavar="KEY=VALUE",
      help="keyword argument of the factory (repeat; values read as YAML), e.g. num_classes=10 (default: none)")
    a("--checkpoint", default=None, action="append" if several else "store",
      help="state dict to load (a dict under model/state_dict also works; default: none, the factory's weights)"
      + ("; repeat: one point each" * several))
    a("--data", required=required, help="a subset folder from `lssr subset`, or an image folder (<class>/<image>, or "
      "train/<class>/<image>; pixels scaled to [0, 1])")
    a("--split", choices=("train", "test"), default="train", help="which split of the data (default train)")
    a("--resize", type=int, default=None,
      help="image folders: resize images to this many pixels (default: their own size)")
    a("--loss", default="ce", help="loss name: ce (cross-entropy) or mse (½‖f(x) − onehot(y)‖²); default ce")
    a("--replacement", action="store_true", help="batches drawn with replacement (default: without)")
    a("--n", type=int, default=None, help="use a seeded subset of n samples (default: all)")
    a("--seed", type=int, default=None, help="seed of the subset and of the sketch's probes (default 0)")
    a("--estimator", choices=("auto", "exact", "sketch"), default="auto",
      help="tr(H S_1) exactly (one HVP per sample) or by the sketch; auto (the default): exact when n <= probes")
    a("--probes", type=int, default=None, help="sketch: the most random-sign probes (default 16)")
    a("--stage1", type=int, default=None, help="sketch: probes of the first block, >= 3 (default 6)")
    a("--rel-se", type=float, default=None, help="sketch: add probes until se <= REL_SE x estimate (default 0.05)")
    a("--no-eigen", action="store_true", help="skip ‖H‖ (the top Hessian eigenvalue; default: computed)")
    a("--eig-tol", type=float, default=None, help="‖H‖: LOBPCG relative residual to stop at (default 1e-3)")
    a("--eig-max-hvps", type=int, default=None, help="‖H‖: the most HVPs of the eigen-solver (default 60)")
    a("--chunk-size", type=int, default=None, help="samples per chunk moved to the device (default 512)")
    a("--store-mb", type=float, default=None,
      help="sketch: keep the per-sample gradients (n x m numbers) in memory up to this many MiB; else the later "
      "products with them are directional derivatives (forward mode), or, for a model without forward mode, a "
      "per-sample pass in each round of probes (default: 1024 with forward mode, else a quarter of the memory "
      "available, at least 1024); the numbers are the same either way")
    a("--bn", choices=("refuse", "eval"), default=None,
      help="batch norm in train mode: refuse (default), or eval (use its running statistics)")
    a("--dropout", choices=("refuse", "off"), default=None, help="active dropout: refuse (default), or off")
    a("--hvp-mode", choices=("auto", "graph", "forward", "reverse", "fd"), default=None,
      help="Hessian-vector products: auto (the default; graph: the graph of the gradient kept in memory, one "
      "backward pass per product, when it fits a quarter of the memory available; else forward-over-reverse, else "
      "reverse-over-reverse, else a central difference of gradients), or one of them")
    a("--device", default="auto",
      help="torch device: auto (cuda when available, else cpu; the default), cpu, cuda or cuda:N")
    a("--dtype", choices=("float32", "float64"), default=None, help="compute dtype (default: the model's)")
    # fmt: on


def add_diagnose_command(sub) -> None:
    d = sub.add_parser(
        "diagnose",
        help="‖H‖, tr(H S_b), ‖H‖_{S_b}, ρ_b and the instability ratio of your own model (lssr.diagnose)",
        description="Run lssr.diagnose on a model built by a factory (optionally loaded from a checkpoint) and a "
        "data set on disk; write OUT/diagnostics.csv (one row per b) and OUT/diagnostics.json (every number, "
        "the cost and the call), and print the table. With the same options and seed it gives the numbers of "
        "the Python call. A freshly built model is in train mode: one with batch norm needs --bn eval, one "
        "with dropout --dropout off. See docs/DIAGNOSTICS.md.",
    )
    a = d.add_argument
    add_model_data_options(a)
    # fmt: off
    a("--batch-sizes", type=int, nargs="+", required=True, metavar="B", help="batch sizes b to report")
    a("--out", required=True, help="output folder for diagnostics.csv and diagnostics.json")
    # fmt: on
    d.set_defaults(func=cmd_diagnose)


def add_recommend_command(sub) -> None:
    r = sub.add_parser(
        "recommend",
        help="the learning rate for a new batch size: η ∝ ρ_b from B_simple measured on your model (LSSR)",
        description="From a reference (--b-ref, --lr-ref) where training works, the learning rate of each target "
        "batch size by LSSR, η(b) = η_ref ρ_b/ρ_{b_ref} with ρ_b = 1/(1 + γ_{N,b} B_simple/b) (eq. (12)), with "
        "its interval, regime, LSR and SRSR values and the stability ceiling 2(1+β) tr S_N / tr(H S_b). B_simple "
        "from existing diagnostics.json files (--diagnostics), a SharpnessMonitor log (--monitor-log), or measured "
        "first on --model and --data (the options of `lssr diagnose`; one point per --checkpoint). Writes "
        "OUT/recommendation.csv, .json and .png. Plain or momentum SGD only. See docs/RECOMMEND.md.",
    )
    a = r.add_argument
    add_model_data_options(a, required=False, several=True)
    # fmt: off
    a("--diagnostics", nargs="+", default=None, metavar="JSON",
      help="diagnostics.json of `lssr diagnose` or `lssr recommend` instead of measuring (several: points along "
      "training; the first gives η, the interval spans all)")
    a("--monitor-log", default=None, metavar="CSV",
      help="the CSV of lssr.SharpnessMonitor(..., stream=False) (e.g. over a short run at --b-ref) instead of "
      "measuring: its latest row gives η, every row widens the interval")
    a("--b-ref", type=int, required=True, help="the reference batch size, where --lr-ref works")
    a("--lr-ref", type=float, required=True, help="the learning rate that works at --b-ref")
    a("--batch-sizes", type=int, nargs="+", required=True, metavar="B", help="target batch sizes b")
    a("--momentum", type=float, default=0.0, help="SGD momentum β (rule on η/(1 − β); default 0)")
    a("--optimizer", default="sgd", help="the optimiser's name: sgd (Adam-type ones are refused)")
    a("--level", type=float, default=0.9, help="confidence level of the interval (default 0.9)")
    a("--n-train", type=int, default=None,
      help="N, the training set's size (default: the size of --data, or n_total of the diagnostics)")
    a("--out", required=True, help="output folder for recommendation.csv, .json, .png (and diagnostics.json)")
    # fmt: on
    r.set_defaults(func=cmd_recommend)
