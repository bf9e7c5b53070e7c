"""The `mamf` command. Thin: it parses arguments into a Config and calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mamf.catalogue import CORE, Setting
from mamf.config import build_config, deep_merge, to_dict
from mamf.system.errors import MamfError

if TYPE_CHECKING:
    from mamf.results import Row


def settings_file(path: str) -> dict:
    """`--config`: a YAML file, or a shipped preset by name (`cpu`)."""
    from mamf.api import settings_file as read

    return read(path)

log = logging.getLogger("mamf")

# flag dest -> dotted config key
COMMON_FLAGS = {
    "model": "model", "seed": "seed", "device": "device", "precision": "precision",
    "data": "data.root", "subdataset": "data.subdataset", "template": "data.template",
    "protocol": "data.protocol", "shots": "data.shots", "queries": "data.queries",
    "tasks": "data.tasks", "split_file": "data.split_file",
}
TRAIN_FLAGS = {
    "method": "train.method", "sampler": "train.sampler", "lr": "train.lr",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size", "steps": "train.steps", "heads": "train.heads",
    "schedule": "train.schedule", "candidates": "train.candidates", "ways": "data.ways",
    "tensorboard": "train.log_dir",
}
EVAL_FLAGS = {"split": "metatest.split"}
DECLARED = {s.key: s for s in CORE if isinstance(s, Setting)}


def _setting(p: argparse.ArgumentParser, flag: str, key: str, help: str | None = None,
             **kwargs) -> None:
    """A flag for the core setting `key`: its type, choices and help (with its default) from the
    setting's declaration (`mamf.config.CORE`); `help` replaces the declared text."""
    setting = DECLARED[key]
    kind = next((t for t in (int, float) if t is setting.type or t in
                 getattr(setting.type, "__args__", ())), None)
    default = setting.default
    if isinstance(default, float):
        default = f"{default:g}".replace("e-0", "e-")
    elif isinstance(default, str) and " " in default:
        default = repr(default)
    said = f" (default {default})" if default not in (None, "", [], False) else ""
    choices = setting.choices if isinstance(setting.choices, tuple) else None
    p.add_argument(flag, type=kind, choices=choices, help=f"{help or setting.help}{said}",
                   **kwargs)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of settings (sections: data, train, metatest), "
                   "or the shipped preset 'cpu' (frozen towers, minutes on a CPU)")
    p.add_argument("--preset", help="a shipped preset: cpu (frozen towers, minutes on a CPU), "
                   "clip-lora (CLIP-LoRA's recipe) or official-baselines (the baselines at their "
                   "official hyper-parameters); --config and --set apply over it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set train.lr=1e-5 or --set "
                   "baseline.coop_lr=0.01 (repeatable); `mamf methods` lists the methods' and "
                   "task samplers' own settings with their defaults")
    _setting(p, "--data", "data.root")
    _setting(p, "--subdataset", "data.subdataset", "which subdataset of a nested folder "
             "(default: none, the folder's labels)")
    _setting(p, "--template", "data.template")
    p.add_argument("--protocol", help="paper: per-class 60/20/20 image split, K(n,N) tasks; episodic: "
                   "class-disjoint splits, N-way K-shot episodes; coop: all-way, --shots K "
                   "training images per class drawn by --seed, the whole test split scored; "
                   "base2novel: coop on the first half of the classes, tested on both halves "
                   "(default paper)")
    _setting(p, "--split-file", "data.split_file")
    _setting(p, "--seed", "seed")
    _setting(p, "--shots", "data.shots")
    _setting(p, "--queries", "data.queries")
    _setting(p, "--tasks", "data.tasks")
    _setting(p, "--device", "device")
    _setting(p, "--precision", "precision")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class _Parser(argparse.ArgumentParser):
    """argparse whose refusals are one `mamf: error:` line, as every other refusal (its
    subcommands' parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"mamf: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The argument parser. It imports no registry (torch stays unloaded, so `--help` is quick):
    method, sampler and model names are checked when the settings are built."""
    models = "default effnet-minilm; `mamf models` lists the built-in ones"
    ap = _Parser(
        prog="mamf", description="Few-shot transfer of vision-language models: MAMF, classical "
        "fine-tuning, FOMAML and zero-shot, measured the same way.")
    ap.add_argument("--version", action="store_true",
                    help="print the versions of mamf, torch, transformers, peft, onnxruntime and "
                    "the device, then exit")
    sub = ap.add_subparsers(dest="command")

    tr = sub.add_parser("train", help="fine-tune a model (mamf, classical, fomaml, ...)",
                        description="Train on the training split; writes model.safetensors, "
                        "config.yaml and train.json to --out.")
    tr.add_argument("--method", help="a method that trains: `mamf methods` (default mamf)")
    tr.add_argument("--sampler", help="which classes a training task gets, for methods that "
                    "train on tasks: `mamf methods` (default uniform)")
    tr.add_argument("--model", help=f"built-in name, CLIP folder or hub id ({models})")
    tr.add_argument("--out", required=True, help="run folder to write")
    tr.add_argument("--ways", help="task size n for methods that train on tasks (default 5); "
                    "a comma list or 'all' trains one run per size, in <out>/ways-<n>")
    _setting(tr, "--lr", "train.lr")
    _setting(tr, "--epochs", "train.epochs")
    _setting(tr, "--batch-size", "train.batch_size")
    _setting(tr, "--steps", "train.steps", "optimiser steps (default: from --epochs)")
    _setting(tr, "--heads", "train.heads")
    _setting(tr, "--schedule", "train.schedule")
    _setting(tr, "--candidates", "train.candidates")
    tr.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard scalars (loss, "
                    "learning rate, images/s) to DIR (default: none); train_log.csv in --out always has them")
    _common(tr)

    ev = sub.add_parser("evaluate", help="meta-test a trained run, or a model zero-shot",
                        description="Adapt on each test task's support set and score its query "
                        "set; appends rows to --out/results.jsonl.")
    src = ev.add_mutually_exclusive_group(required=True)
    # torchrun's parser takes --run for an abbreviation of its --run-path before mamf sees it:
    # --run-dir starts no torchrun option; --run stays for a plain `mamf evaluate`
    src.add_argument("--run-dir", "--run", dest="run", metavar="DIR",
                     help="a folder written by `mamf train` (--run also works outside torchrun)")
    src.add_argument("--model", help=f"evaluate this model zero-shot ({models})")
    ev.add_argument("--out", required=True, help="folder for results.jsonl")
    ev.add_argument("--ways", help="task size(s): n, a comma list, or 'all' (start_n..N-1); "
                    "default 5, or a run's own")
    _setting(ev, "--split", "metatest.split")
    ev.add_argument("--method",
                    help="the test-time method: with --model one that does not train (default "
                    "zeroshot; e.g. tip-adapter); with --run-dir the run's own (default) or one that "
                    "does not train, scoring the trained weights")
    _common(ev)

    ex = sub.add_parser("experiment", help="run a grid of experiments from a YAML file, resumably",
                        description="Datasets x seeds x methods x task sizes; rows append to "
                        "--out/results.jsonl as they finish, and a rerun skips finished rows.")
    ex.add_argument("config", help="experiment YAML (see configs/)")
    ex.add_argument("--out", required=True, help="folder for results.jsonl and the report")
    ex.add_argument("--quiet", action="store_true", help="no progress bars")
    ex.add_argument("--data-root", metavar="DATA", help="the folder that ${MAMF_DATA} stands for "
                    "in the datasets' roots (CoOp's $DATA: configs/coop-benchmark.yaml)")
    ex.add_argument("--launcher", choices=["local", "submitit"], default="local",
                    help="local: this process (default); submitit: one cluster job per unit "
                    "(Slurm where sbatch exists), rows merged when they end; a rerun submits "
                    "only the units not done")
    ex.add_argument("--slurm-partition", help="Slurm partition of the jobs")
    ex.add_argument("--slurm-time", type=int, default=240, help="minutes per job (default 240)")
    ex.add_argument("--slurm-cpus", type=int, default=4, help="CPUs per job (default 4)")
    ex.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per job (default 0)")
    ex.add_argument("--slurm-mem-gb", type=int, help="memory per job in GB")
    ex.add_argument("--submitit-cluster", choices=["slurm", "local"],
                    help="force submitit's executor (default: slurm if sbatch is found)")
    ex.add_argument("--max-jobs", type=int,
                    help="jobs running at once (local default: what the cores and the memory "
                    "hold; Slurm: the array's parallelism, default unlimited)")

    tu = sub.add_parser("tune", help="choose each method's rates on dev-split tasks (an "
                        "experiment's tune: section)",
                        description="Train every point of the experiment's tune.grid with "
                        "tune.seed, score it on dev-split tasks, and write every score and the "
                        "choice to --out/tune.json (resumable); `mamf experiment` with the same "
                        "--out then uses the chosen values.")
    tu.add_argument("config", help="experiment YAML with a tune: section")
    tu.add_argument("--out", required=True, help="the experiment's output folder")
    tu.add_argument("--quiet", action="store_true", help="no progress bars")
    tu.add_argument("--data-root", metavar="DATA", help="the folder that ${MAMF_DATA} stands for "
                    "in the datasets' roots")

    xp = sub.add_parser("export", help="a trained run as a transformers, peft or ONNX folder",
                        description="Write the run's model in a standard form and check it, "
                        "loaded back, against the run (embeddings within 1e-5).")
    xp.add_argument("run", help="a folder written by `mamf train`")
    xp.add_argument("--format", required=True, choices=["hf", "peft", "onnx"],
                    help="hf: save_pretrained folder (LoRA merged); peft: a LoRA run's adapter "
                    "folder; onnx: image.onnx and text.onnx")
    xp.add_argument("--out", required=True, help="new folder to write")

    rp = sub.add_parser("report", help="summarise a results folder: table and figure")
    rp.add_argument("dir", help="a folder holding results.jsonl")
    rp.add_argument("--reference", metavar="METHOD", default=None,
                    help="pair every method against this one (default: classical FT where it "
                    "ran, else zero-shot)")
    rp.add_argument("--cell", metavar="DATASET:METHOD:WAYS", default=None,
                    help="the cell whose per-class accuracy and confusion matrix are shown "
                    "(default: the first with stored predictions)")
    rp.add_argument("--quiet", action="store_true", help="no progress bars")

    da = sub.add_parser("data", help="build an offline benchmark dataset in the standard layout, "
                        "import one of the paper's from its archive, or check the field's "
                        "(`mamf data check DATA`)")
    da.add_argument("name", help="build emoji, emoji-levels, counting, spurious, fashion-mnist or "
                    "digits; import cub, "
                    "mini-imagenet, fungi, clevr-counting or abo-material (with --from); check: "
                    "which of CoOp's 15 datasets DATA holds, complete and readable")
    da.add_argument("data", nargs="?", help="check: the folder holding CoOp's datasets "
                    "(DATASETS.md's $DATA), or one of them")
    da.add_argument("--out", help="folder to write the dataset to")
    da.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="builder option, e.g. --set per_class=100 (repeatable)")
    da.add_argument("--from", dest="sources", action="append", default=[], metavar="PATH",
                    help="import from this archive or its extracted folder (repeatable: fungi "
                    "and abo-material come as two archives)")
    da.add_argument("--classes", type=int, metavar="N", help="import N classes drawn at random")
    da.add_argument("--per-class", type=int, metavar="K", help="import K images of each class, drawn at "
                    "random (classes with fewer are not drawn)")
    da.add_argument("--seed", type=int, help="seed of the subset draws (default 0)")
    da.add_argument("--crop-boxes", action="store_true", help="cub: crop to the bounding boxes")

    de = sub.add_parser("demo", help="build data, run all four methods on the offline default, "
                        "print a table",
                        description="The paper's comparison in minutes on a CPU: zero-shot, "
                        "classical fine-tuning, MAMF and FOMAML with effnet-minilm on emoji "
                        "(episodic) and counting (paper protocol). Its settings are the shipped "
                        "demo.yaml; copy it and pass --config to scale up.")
    de.add_argument("--out", default="mamf-demo", help="output folder (default ./mamf-demo)")
    de.add_argument("--config", help="experiment YAML to use instead of the shipped demo.yaml")
    de.add_argument("--quiet", action="store_true", help="no progress bars")

    sub.add_parser("models", help="list the built-in models")
    sub.add_parser("methods", help="list the methods and task samplers, each with its own "
                   "settings (default, range, help)")
    return ap


def _overrides(args: argparse.Namespace, flags: dict) -> dict:
    out = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[key] = value
    for item in args.set:
        if "=" not in item:
            raise MamfError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def _config(args, flags: dict, base: dict | None = None):
    from mamf import plugins  # noqa: F401  (every plug-in joins the catalogue)

    merged = dict(base or {})
    if getattr(args, "preset", None) is not None:  # "" is refused, not ignored
        from mamf.api import preset

        merged = deep_merge(merged, preset(args.preset))
    if args.config:
        merged = deep_merge(merged, settings_file(args.config))
    return build_config(merged, _overrides(args, flags))


def _is_main() -> bool:
    from mamf.parallel.distributed import is_main

    return is_main()


def cmd_train(args) -> None:
    from mamf.api import train

    flags = {k: v for k, v in TRAIN_FLAGS.items() if k != "ways"}
    config = _config(args, {**COMMON_FLAGS, **flags})
    sizes = _train_sizes(config, args.ways)
    for ways in sizes:
        out = Path(args.out) if len(sizes) == 1 else Path(args.out) / f"ways-{ways}"
        sized = build_config(to_dict(config), {"data.ways": ways})
        summary = train(sized, out, progress=not args.quiet).summary
        if not _is_main():
            continue
        processes = summary.get("processes", 1)
        on = f" on {processes} processes" if processes > 1 else ""
        images = f", {summary['images']:,} images" if summary.get("images") else ""
        budget = f", {summary['budget']} budget" if summary.get("budget") else ""
        print(f"trained {summary['method']} on {summary['dataset']}{on} ({summary['steps']} "
              f"steps{images}{budget}, {summary['train_time_s']:.1f} s): loss "
              f"{summary['mean_loss_first_tenth']:.3f} -> {summary['mean_loss_last_tenth']:.3f} "
              f"(first -> last tenth of steps)")
        print(f"weights and config in {out}")


def _train_sizes(config, value) -> list[int]:
    """`train --ways` in evaluate's grammar: n, a comma list, or 'all' (one run per size)."""
    from mamf.runs.ways import ways_list

    if value is None:
        return [config.data.ways]
    if not config.data.root:
        raise MamfError("no data folder given: pass --data DIR")
    from mamf.data.dataset import class_count

    n_classes = class_count(config.data.root, config.data.subdataset)
    return ways_list(config, n_classes, value)


def cmd_evaluate(args) -> None:
    from mamf.api import evaluate

    settings = settings_file(args.config) if args.config else {}
    if args.preset is not None:
        from mamf.api import preset

        settings = deep_merge(preset(args.preset), settings)
    dotted = _overrides(args, {**COMMON_FLAGS, **EVAL_FLAGS})
    source = Path(args.run) if args.run else settings
    rows = evaluate(source, Path(args.out), method=args.method, ways=args.ways,
                    progress=not args.quiet, settings=settings if args.run else None,
                    overrides=dotted)
    if not _is_main():
        return
    for r in rows:
        print(f"{r.method:>9} {r.dataset} {r.protocol} {r.ways}-way "
              f"{r.split}: acc {r.acc_mean:.3f} ± {r.acc_ci95:.3f} over {r.n_tasks} tasks")
    print(f"results appended to {Path(args.out) / 'results.jsonl'}")


def cmd_export(args) -> None:
    from mamf.runs.export import export_run

    written = export_run(Path(args.run), args.format, Path(args.out))
    print(f"exported {args.run} as {args.format} to {args.out} (checked against the run): "
          f"{', '.join(written)}")


def cmd_models(args) -> None:
    from mamf.models.registry import model_names

    for name, text in model_names().items():
        print(f"{name:18} {text}")
    print("or a local CLIPModel folder / hub id, e.g. openai/clip-vit-base-patch32")


def cmd_methods(args) -> None:
    print(methods_listing())


def methods_listing() -> str:
    """`mamf methods`: the methods and task samplers, each with its own settings (key, default,
    range, help) indented below it, then any protocol's or model's settings."""
    from mamf import methods, protocols
    from mamf.models import registry as models
    from mamf.tasks import samplers

    width = max(len(n) for n in (*methods.names(), *samplers.names())) + 2
    lines = []

    def own(settings) -> None:
        lines.extend(f"{'':{width}}  {s.describe()}" for s in settings)

    for name in methods.names():
        kind = methods.method_class(name)
        what = ("trains per task size" if kind.trains_per_ways else "trains once") \
            if issubclass(kind, methods.TrainedMethod) else "no training"
        lines.append(f"{name:{width}}{kind.presentation.description} [{what}]")
        own(kind.settings)
    lines.append(f"\ntask samplers ({samplers.SAMPLER.describe()}):")
    for name in samplers.names():
        lines.append(f"{name:{width}}{samplers.REGISTRY[name].description}")
        own(samplers.REGISTRY[name].settings)
    others = [*protocols.settings(), *models.settings()]
    if others:
        lines.append("\nsettings of the protocols and models:")
        own(others)
    return "\n".join(lines)


def cmd_experiment(args) -> None:
    from mamf.runs.experiment import load_experiment, run_experiment

    _data_root(args)
    experiment = load_experiment(args.config)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.launcher == "submitit":
        from mamf.runs.launcher import SlurmSettings, launch

        slurm = SlurmSettings(args.slurm_partition, args.slurm_time, args.slurm_cpus,
                              args.slurm_gpus, args.slurm_mem_gb, args.submitit_cluster,
                              args.max_jobs)
        rows = launch(experiment, Path(args.out), slurm)
    else:
        rows = run_experiment(experiment, Path(args.out), progress=not args.quiet)
    if _is_main():
        _summarise(rows, Path(args.out), experiment.name, since=started)


def _data_root(args) -> None:
    """`--data-root DATA`: what `${MAMF_DATA}` stands for in an experiment's dataset roots; an
    environment variable, so that every process of the run (torchrun, the launcher's jobs)
    reads the same."""
    from mamf.runs.experiment_file import DATA_ROOT

    if args.data_root:
        root = Path(args.data_root).expanduser()
        if not root.is_dir():
            raise MamfError(f"--data-root {args.data_root}: no such folder")
        os.environ[DATA_ROOT] = str(root.resolve())


def cmd_tune(args) -> None:
    from mamf.runs.experiment import load_experiment
    from mamf.runs.tune import TUNE_FILE, tune_experiment
    from mamf.system.lock import exclusive

    _data_root(args)
    experiment = load_experiment(args.config)
    if experiment.tune is None:
        raise MamfError(f"{args.config} has no tune: section (see docs/method.md, \"Tuning\")")
    with exclusive(Path(args.out)):
        chosen = tune_experiment(experiment, Path(args.out), progress=not args.quiet)
    for (dataset, method), record in chosen.items():
        values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in record["values"].items())
        seeds = record["seed"] if isinstance(record["seed"], list) else [record["seed"]]
        print(f"{dataset} {method}: {values} (dev accuracy {record['dev_acc']:.3f}, "
              f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})")
    print(f"every grid point's score in {Path(args.out) / TUNE_FILE}")


def _failures_line(out: Path, since: str | None) -> str:
    """What failures.jsonl says: the failures of this pass (`since`, an ISO time), or, for a
    report, every record on file; earlier failures that a rerun has redone are not news."""
    from mamf.system.io import read_jsonl

    path = out / "failures.jsonl"
    if not path.exists():
        return ""
    times = [str(r.get("time", "")) for r in read_jsonl(path)]
    if since is not None:
        now = [t for t in times if t >= since]
        return (f"{len(now)} run(s) failed in this pass: see {path} (a rerun retries them)"
                if now else "")
    return (f"{path} holds {len(times)} failure record(s), the latest at {max(times)}; a rerun "
            "of the experiment retries what has no rows" if times else "")


def _summarise(rows: list[Row], out: Path, title: str, reference: str | None = None,
               cell: tuple | None = None, since: str | None = None) -> None:
    from mamf.report import accuracy_table, comparison_note, main_rows, settings_line, write_report
    from mamf.report.tables import accuracy_notes

    if not rows:
        raise MamfError(f"no results rows in {out}")
    main = main_rows(rows)  # the report's own accuracy table, the same rows
    if main:
        print(accuracy_table(main))
        for note in [*accuracy_notes(main), comparison_note(main)]:
            if note:
                print(f"\n{note}")
        print(f"\n({settings_line(main)})")
    files = write_report(rows, out, title, reference, cell)
    print(f"results: {out / 'results.jsonl'}")
    figure = f"; figure: {files['summary']}" if "summary" in files else ""
    print(f"report: {files['md']} and {files['html']}{figure}")
    failures = _failures_line(out, since)
    if failures:
        print(failures)


def cmd_report(args) -> None:
    from mamf.results import read_rows

    out = Path(args.dir)
    if not (out / "results.jsonl").is_file():
        raise MamfError(f"{out} holds no results.jsonl")
    _summarise(read_rows(out / "results.jsonl"), out, out.name, args.reference,
               _cell(args.cell) if args.cell else None)


def _cell(text: str) -> tuple:
    """DATASET:METHOD:WAYS as (dataset, method, ways); a dataset's name may hold colons."""
    dataset, method, ways = text.rsplit(":", 2) if text.count(":") >= 2 else (text, "", "")
    if not dataset or not method or not ways.isdigit():
        raise MamfError(f"--cell must be DATASET:METHOD:WAYS (e.g. emoji:mamf:5), got {text!r}")
    return dataset, method, int(ways)


def cmd_data(args) -> None:
    from mamf.data.builders import build
    from mamf.data.importers import IMPORTERS

    if args.name == "check":
        _check_data(args)
        return
    if args.data is not None:
        raise MamfError(f"unexpected argument {args.data!r}: only `mamf data check DATA` takes a "
                        "folder after the name")
    if not args.out:
        raise MamfError(f"mamf data {args.name} needs --out FOLDER")
    if args.name in IMPORTERS:
        _import_data(args, IMPORTERS[args.name])
        return
    used = [flag for flag, value in (("--from", args.sources), ("--classes", args.classes),
                                     ("--per-class", args.per_class), ("--seed", args.seed),
                                     ("--crop-boxes", args.crop_boxes)) if value not in (None, [], False)]
    if used:
        raise MamfError(f"{used[0]} is for the importers ({', '.join(IMPORTERS)}); builder "
                        f"{args.name!r} takes --set KEY=VALUE")
    options = {}
    for item in args.set:
        if "=" not in item:
            raise MamfError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = _literal(value)
    root = build(args.name, Path(args.out), log=lambda m: print(f"mamf: {m}"), **options)
    print(f"{args.name} is ready in {root}")


def _check_data(args) -> None:
    """`mamf data check DATA`: which of CoOp's 15 folders are present, complete and readable."""
    from mamf.data.coop_layouts import survey, survey_lines

    if not args.data:
        raise MamfError("mamf data check needs the data folder: mamf data check DATA")
    for line in survey_lines(survey(args.data)):
        print(line)


def _import_data(args, importer) -> None:
    if not args.sources:
        raise MamfError(f"{args.name} is imported from its publisher's archive: pass --from PATH "
                        "(the archive or its extracted folder)")
    if args.set:
        raise MamfError(f"{args.name} takes --classes, --per-class, --seed"
                        f"{' and --crop-boxes' if args.name == 'cub' else ''}, not --set")
    extra = {}
    if args.crop_boxes:
        if args.name != "cub":
            raise MamfError("--crop-boxes is for cub only")
        extra["crop_boxes"] = True
    root = importer(args.sources, Path(args.out), classes=args.classes, per_class=args.per_class,
                    seed=0 if args.seed is None else args.seed,
                    log=lambda m: print(f"mamf: {m}"), **extra)
    print(f"{args.name} is ready in {root}")


def _literal(value: str):
    from mamf.config import parse_yaml

    try:
        return parse_yaml(value, "--set value")
    except MamfError:
        return value  # not YAML: the builder's type check decides


def cmd_demo(args) -> None:
    from importlib.resources import files

    from mamf.runs.experiment import load_experiment, run_experiment

    config = Path(args.config) if args.config else Path(str(files("mamf") / "configs" /
                                                              "demo.yaml"))
    experiment = load_experiment(config)
    say = print if _is_main() else (lambda *_: None)
    say(f"mamf demo: {experiment.model} on {', '.join(d.name for d in experiment.datasets)}; "
          f"methods {', '.join(experiment.methods)}; settings from {config}")
    frozen = experiment.settings.get("train", {})
    if frozen.get("freeze_image_backbone") or frozen.get("freeze_text_tower"):
        say("mamf demo: to fit a few CPU minutes the demo trains the ConSE head and logit "
              "scale only (image backbone and text tower frozen, their outputs computed once); "
              "set train.freeze_image_backbone/freeze_text_tower to false for end-to-end.")
    started = time.perf_counter()
    rows = run_experiment(experiment, Path(args.out), progress=not args.quiet)
    if not _is_main():
        return
    _summarise(rows, Path(args.out), f"mamf demo ({experiment.model})")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "experiment": cmd_experiment,
            "tune": cmd_tune,
            "report": cmd_report, "data": cmd_data, "demo": cmd_demo, "models": cmd_models,
            "methods": cmd_methods, "export": cmd_export}


def versions() -> str:
    """`mamf --version`: this package, the libraries a result depends on, and the device."""
    from importlib.metadata import PackageNotFoundError, version

    import mamf

    parts = [f"mamf {mamf.__version__}"]
    for name in ("torch", "transformers", "peft", "onnxruntime"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    import torch

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return "\n".join([*parts, f"device {device}"])


def main(argv: list[str] | None = None) -> int:
    # off a terminal (a log file) every line carries its time, as the progress lines do
    stamped = "" if sys.stderr.isatty() else "%(asctime)s "
    logging.basicConfig(level=logging.INFO, format=f"mamf: {stamped}%(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)
    for noisy in ("matplotlib", "PIL"):  # third parties speak only to warn
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if hasattr(sys.stdout, "reconfigure"):  # a file name that is not UTF-8 prints as \xff
        sys.stdout.reconfigure(errors="backslashreplace")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = parser()
    args = ap.parse_args(argv)
    if args.version:
        print(versions())
        return 0
    if not args.command:
        ap.error("no command given (train, evaluate, experiment, report, ...)")
    from mamf.parallel import distributed
    from mamf.system import progress
    from mamf.system.allocator import keep_freed_memory

    keep_freed_memory()  # the command line's process (torchrun's workers too), before big tensors

    progress.set_quiet(bool(getattr(args, "quiet", False)))

    if not distributed.is_main():  # under torchrun rank 0 reports; the others only warn
        logging.getLogger().setLevel(logging.WARNING)

    ok = False
    try:
        COMMANDS[args.command](args)
        ok = True
    except MamfError as e:
        print(f"mamf: error: {_where()}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mamf: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if not distributed.timed_out(e):
            raise
        print(f"mamf: error: {_where()}no answer from another rank within MAMF_DIST_TIMEOUT="
              f"{distributed.timeout_seconds():g} s: it stopped or is stuck, so the job ends "
              f"({str(e).strip().splitlines()[0]})", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown(ok)
        progress.set_quiet(False)  # main() may be called again in this process (tests, scripts)
    return 0


def _where() -> str:
    """Under torchrun, which rank speaks."""
    from mamf.parallel import distributed

    return f"rank {distributed.rank()}: " if distributed.launched() else ""


if __name__ == "__main__":
    sys.exit(main())
