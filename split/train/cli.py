"""`splitedge train`, `eval`, `rd`, `prefilter` and `finetune`: the offline commands.

Each handler imports what it needs when it runs, so `splitedge train --help` costs no
pycocotools and no matplotlib.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _train(argv: list[str]) -> int:
    from split.images import ImageError
    from split.train.config import ConfigError
    from split.train.data import DataError
    from split.train.distill import train_from_file
    from split.weights import WeightsError

    p = argparse.ArgumentParser(prog="splitedge train",
                                description="Distill a split model's head and bottleneck from the original (HND/GHND).")
    p.add_argument("--config", required=True, metavar="FILE.yaml", help="training recipe (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the config's output checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    args = p.parse_args(argv)
    try:
        result = train_from_file(args.config, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DataError, ImageError, WeightsError) as exc:
        print(f"splitedge train: error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # an unknown recipe name
        print(f"splitedge train: error: {exc.args[0]}", file=sys.stderr)
        return 2
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("val_") or k == "loss")
    print(f"{result.checkpoint}: {result.epochs_run} epochs in {result.wall_s:.0f} s "
          f"(teacher cache {result.cache_s:.0f} s)" + (f"; {summary}" if summary else ""))
    return 0



def _qualities(text: str) -> tuple[int, ...] | None:
    """`--qualities` of eval and rd: comma-separated JPEG/WebP qualities in 1..100, or None."""
    try:
        qualities = tuple(int(q) for q in text.split(","))
    except ValueError:
        return None
    return qualities if all(1 <= q <= 100 for q in qualities) else None


def _eval(argv: list[str]) -> int:
    import json
    from pathlib import Path

    from split.images import ImageError
    from split.train.config import ConfigError, load_config
    from split.train.data import DataError
    from split.train.evaluation import evaluate, format_summary, plot
    from split.weights import WeightsError

    p = argparse.ArgumentParser(prog="splitedge eval",
                                description="Original vs split vs JPEG offload: accuracy and bytes on real images.")
    p.add_argument("--model", required=True, help="recipe name (`splitedge models`)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="distilled head/bottleneck; repeat for a bytes/accuracy curve")
    p.add_argument("--weights", help="torchvision weights enum of the model (e.g. IMAGENET1K_V1; default: the "
                                     "recipe's shipped network and split)")
    p.add_argument("--images", help="image folder (default with --config: its data.dir)")
    p.add_argument("--annotations", metavar="COCO.json", help="COCO annotations: detectors get map/map50")
    p.add_argument("--labels", metavar="prefix|FILE.csv", help="classifier labels (default with --config: its data.labels)")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--val-only", action="store_true", help="only the images --config's training held out")
    part.add_argument("--train-only", action="store_true",
                      help="only the images --config's training used: the part to choose checkpoints on")
    p.add_argument("--config", metavar="FILE.yaml", help="training recipe whose data split --val-only/--train-only use")
    p.add_argument("--json", required=True, metavar="OUT.json")
    p.add_argument("--plot", metavar="OUT.png")
    p.add_argument("--qualities", default="50,75,90", help="JPEG qualities of the offload baseline")
    p.add_argument("--limit", type=int, help="first N images only (quick look)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="detectors with --annotations: 95%% interval of each mAP / original's mAP from N image resamples")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    prog = "splitedge eval: error:"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    qualities = _qualities(args.qualities)
    if qualities is None:
        print(f"{prog} --qualities must be comma-separated integers in 1..100, got {args.qualities!r}", file=sys.stderr)
        return 2
    if args.bootstrap < 0:
        print(f"{prog} --bootstrap must be >= 0, got {args.bootstrap}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config) if args.config else None
        if (args.val_only or args.train_only) and cfg is None:
            raise ConfigError(f"{'--val-only' if args.val_only else '--train-only'} needs --config "
                              "(the training recipe that held the images out)")
        images = args.images or (cfg.data.dir if cfg else None)
        if not images:
            raise ConfigError("--images is required (or --config with data.dir)")
        labels = args.labels or (cfg.data.labels if cfg and not args.annotations else None)
        result = evaluate(args.model, images, args.checkpoint, weights=args.weights, annotations=args.annotations,
                          labels=labels, val_only=(cfg.data.val_fraction, cfg.data.seed) if (args.val_only or args.train_only) and cfg else None,
                          part="train" if args.train_only else "val",
                          qualities=qualities, limit=args.limit, progress=not args.no_progress,
                          bootstrap=args.bootstrap)
    except (ConfigError, DataError, ImageError, WeightsError) as exc:
        print(f"{prog} {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"{prog} {exc.args[0]}", file=sys.stderr)
        return 2
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    print(format_summary(result))
    print(f"-> {args.json}" + (f", {args.plot}" if args.plot else ""))
    return 0



def _prefilter(argv: list[str]) -> int:
    """`splitedge prefilter`: train the prefilter and add it to a checkpoint."""
    import json
    from pathlib import Path

    import torch

    from split.labels import coco_category
    from split.recipes import build, default_recipe
    from split.train.prefilter import heldout_report, labels_from_coco, labels_from_teacher, train_prefilter
    from split.weights import WeightsError, load_checkpoint

    p = argparse.ArgumentParser(prog="splitedge prefilter",
                                description="Train the prefilter on head features; threshold for a target recall.")
    p.add_argument("--model", default=default_recipe().name)
    p.add_argument("--checkpoint", help="start from this checkpoint (its head, bottleneck, model)")
    p.add_argument("--weights")
    p.add_argument("--images", required=True, action="append", metavar="DIR",
                   help="folder of training images (repeat for several: e.g. COCO scenes and ImageNet samples)")
    p.add_argument("--annotations", help="COCO json for labels; without it the teacher's detections are the labels")
    p.add_argument("--teacher-score", type=float, default=0.5,
                   help="a frame is positive when the original model finds a target class at this score or more")
    p.add_argument("--classes", help="comma-separated target COCO categories, names or ids (default: all)")
    p.add_argument("--target-recall", type=float, default=0.9)
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of the training images that chooses the epoch and the threshold")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", metavar="FILE.yaml",
                   help="train only on the images this training recipe trained on, in every folder; its held-out "
                        "part stays unseen and is where the report's `heldout` figures are measured")
    p.add_argument("--out", required=True, metavar="CKPT.pt")
    args = p.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"splitedge prefilter: error: {msg}", file=sys.stderr)
        return 2

    files: list[Path] = []
    heldout: list[Path] = []
    cfg = None
    if args.config:
        from split.train.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except (ConfigError, OSError) as exc:
            return fail(str(exc))
    for name in args.images:
        folder = Path(name)
        if not folder.is_dir():
            return fail(f"cannot read images {str(folder)!r}: not a directory")
        found = sorted(f for f in folder.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if cfg is not None:
            from split.train.data import train_val_split

            train_idx, val_idx = train_val_split([f.name for f in found], cfg.data.val_fraction, cfg.data.seed)
            heldout += [found[i] for i in val_idx]
            found = [found[i] for i in train_idx]
        files += found
    if args.annotations and len(args.images) > 1:
        return fail("--annotations labels one folder; with several --images the teacher's detections are the labels")
    if len(files) < 8:
        return fail(f"{', '.join(args.images)} hold {len(files)} training images; the prefilter needs at least 8")
    try:
        classes = [coco_category(c) for c in args.classes.split(",")] if args.classes else None
        model, source = build(args.model, weights=args.weights, checkpoint=args.checkpoint)
        base = load_checkpoint(args.checkpoint) if args.checkpoint else {"recipe": model.name}
    except ValueError as exc:
        return fail(f"--classes {args.classes!r}: {exc}")
    except (KeyError, WeightsError) as exc:
        return fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
    model.prefilter = None  # a checkpoint that holds one already: the teacher's labels come from the model
    print(f"prefilter on {model.name}: weights {source}", file=sys.stderr)
    if args.annotations:
        labels = labels_from_coco(args.annotations, files, target_classes=classes)
        label_source = {"source": "annotations", "file": args.annotations}
    else:
        labels = labels_from_teacher(model, files, score=args.teacher_score, target_classes=classes)
        label_source = {"source": "teacher", "score": args.teacher_score}
    if len(set(labels)) < 2:
        return fail(f"all {len(labels)} images have label {labels[0]}: the prefilter needs frames with and without objects")
    prefilter, report = train_prefilter(model, files, labels, val_fraction=args.val_fraction, epochs=args.epochs,
                                        seed=args.seed, target_recall=args.target_recall, target_classes=classes)
    summary = {k: v for k, v in report.items() if isinstance(v, (int, float, type(None)))}
    summary["images"] = args.images
    summary["labels"] = label_source
    if heldout and not args.annotations:
        summary["heldout"] = heldout_report(model, prefilter, heldout, score=args.teacher_score, target_classes=classes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**base, "recipe": model.name, "prefilter": prefilter.state_dict(), "prefilter_report": summary},
               args.out)
    keys = ("recall", "precision", "drop_rate", "threshold", "auc")
    line = {k: report.get(k) for k in keys}
    if "heldout" in summary:
        line["heldout"] = summary["heldout"]
    print(json.dumps(line), f"-> {args.out}")
    return 0



def _finetune(argv: list[str]) -> int:
    """`splitedge finetune`: supervised fine-tuning of a detector recipe on COCO-format data."""
    import time
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from split.builders import BUILDERS
    from split.recipes import get_recipe
    from split.train.data import DataError
    from split.train.finetune import CocoDetection, category_ids, coco_split, detection_map, finetune_detector

    p = argparse.ArgumentParser(prog="splitedge finetune", description="Fine-tune a detector on COCO-format data.")
    p.add_argument("--model", default="fasterrcnn_mobilenet_v2_320_fpn")
    p.add_argument("--images", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--classes", default="all", help="comma-separated COCO category names to learn (default: all)")
    p.add_argument("--backbone-weights", default="IMAGENET1K_V1", help="ImageNet weights of the backbone (`make weights`)")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="images held out by file name, as `splitedge train`/`eval --val-only` do")
    p.add_argument("--eval-every", type=int, default=0, metavar="N", help="print held-out mAP every N epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="CKPT.pt")
    args = p.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"splitedge finetune: error: {msg}", file=sys.stderr)
        return 2

    try:
        recipe = get_recipe(args.model)
    except KeyError as exc:
        return fail(str(exc.args[0]))
    if recipe.builder not in BUILDERS:
        return fail(f"{args.model!r} has no fine-tunable builder; choose one of {', '.join(BUILDERS)}")
    try:
        classes = category_ids(args.annotations, None if args.classes == "all" else args.classes.split(","))
        train_ids, val_ids = coco_split(args.images, args.annotations, args.val_fraction, args.seed)
    except (DataError, KeyError, OSError, ValueError) as exc:
        return fail(f"{args.annotations} / {args.images}: {exc.args[0] if exc.args else exc}")
    builder_kwargs = {"num_classes": max(classes) + 1}  # labels stay COCO ids; 0 is background
    torch.manual_seed(args.seed)
    try:
        model = BUILDERS[recipe.builder](weights_backbone=args.backbone_weights, **{**recipe.kwargs, **builder_kwargs})
    except Exception as exc:  # torchvision raises several types for a missing cached file
        return fail(f"cannot build {args.model} with backbone weights {args.backbone_weights}: {exc}")
    print(f"finetune {args.model}: backbone weights torchvision {args.backbone_weights}, detection heads random "
          f"init (seed {args.seed})", file=sys.stderr)
    val_maps: list[dict[str, float]] = []
    losses: list[float] = []
    began = time.monotonic()

    def save() -> None:  # after every evaluation and at the end: a long run never loses all its work
        state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}  # half the bytes
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"recipe": recipe.name, "model": state, "builder_kwargs": builder_kwargs, "classes": classes,
                    "train_image_ids": train_ids, "val_image_ids": val_ids, "history": losses, "val_map": val_maps,
                    "epochs": len(losses), "wall_s": round(time.monotonic() - began, 1)}, args.out)

    def on_epoch(epoch: int, loss: float) -> None:
        losses.append(loss)
        if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            m, m50 = detection_map(model, args.images, args.annotations, val_ids, sorted(classes))
            val_maps.append({"epoch": epoch + 1, "loss": loss, "map": m, "map50": m50})
            tqdm.write(f"epoch {epoch + 1}: loss {loss:.3f}, held-out mAP {m:.3f}, mAP50 {m50:.3f}")
            save()

    history = finetune_detector(model, CocoDetection(args.images, args.annotations, train_ids, train=True,
                                                     classes=sorted(classes)),
                                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                on_epoch=on_epoch)
    save()
    print(f"loss {history[0]:.3f} -> {history[-1]:.3f} over {args.epochs} epochs "
          f"({time.monotonic() - began:.0f} s); held out {len(val_ids)} images -> {args.out}")
    return 0


def _rd(argv: list[str]) -> int:
    """`splitedge rd`: the rate–accuracy curve (split.train.rd) into rd.csv, rd.json and rd.png."""
    import json
    from pathlib import Path

    from split.images import ImageError
    from split.train.config import ConfigError
    from split.train.data import DataError
    from split.train.rd import DEFAULT_QUALITIES, held_out_rule, plot, rate_accuracy, write_csv
    from split.weights import WeightsError

    p = argparse.ArgumentParser(prog="splitedge rd",
                                description="Rate-accuracy curve: each checkpoint, JPEG and WebP of the model's input "
                                            "at several qualities; bytes are whole Frame messages.")
    p.add_argument("--model", required=True, help="recipe name (`splitedge models`)")
    p.add_argument("--checkpoint", action="append", required=True, metavar="FILE",
                   help="a split checkpoint (8-bit or entropy-coded); repeat for more points")
    p.add_argument("--weights", help="torchvision weights enum of the model (default: the recipe's network)")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--annotations", metavar="COCO.json", help="COCO annotations: detectors are scored by mAP")
    p.add_argument("--labels", metavar="prefix|FILE.csv", help="classifier labels: scored by top-1")
    p.add_argument("--val-only", action="store_true",
                   help="only the images the training held out (rule from --config, else from the checkpoints)")
    p.add_argument("--config", metavar="FILE.yaml", help="training recipe whose data split --val-only uses")
    p.add_argument("--qualities", default=",".join(map(str, DEFAULT_QUALITIES)), help="JPEG and WebP qualities")
    p.add_argument("--limit", type=int, help="first N images only (quick look)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes rd.csv, rd.json and rd.png there")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    prog = "splitedge rd: error:"
    qualities = _qualities(args.qualities)
    if qualities is None:
        print(f"{prog} --qualities must be comma-separated integers in 1..100, got {args.qualities!r}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        val_only = held_out_rule(args.config, args.checkpoint) if args.val_only else None
        result = rate_accuracy(args.model, args.images, args.checkpoint, weights=args.weights,
                               annotations=args.annotations, labels=args.labels, val_only=val_only,
                               qualities=qualities, limit=args.limit, progress=not args.no_progress)
    except (ConfigError, DataError, ImageError, WeightsError) as exc:
        print(f"{prog} {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # an unknown recipe name
        print(f"{prog} {exc.args[0]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result, out / "rd.csv")
    (out / "rd.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "rd.png")
    metric = result["accuracy_metric"]
    for r in result["rows"]:
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        print(f"{r['method']:<8} {r['setting']:<24} {r['bytes_median']:>9.0f} B  {metric} {acc}")
    orig = result["original"]["accuracy"]
    print(f"original ({result['images']} images): {metric} {'n/a' if orig is None else f'{orig:.3f}'}")
    print(f"-> {out / 'rd.csv'}, {out / 'rd.json'}, {out / 'rd.png'}")
    return 0


_HANDLERS = {"train": _train, "eval": _eval, "prefilter": _prefilter, "finetune": _finetune, "rd": _rd}


def main(command: str, argv: list[str]) -> int:
    """`splitedge COMMAND ARGV...` for the commands `split.dispatch.COMMANDS` maps here."""
    return _HANDLERS[command](argv)
