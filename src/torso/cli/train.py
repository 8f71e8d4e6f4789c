"""`torso train DATA`: fine-tune (or train) a model on a folder of images and write a run folder.

The run folder (`--out`, default `runs/<data folder name>`) receives `model.safetensors` +
`torso.json` (the final model), `best/` (the best epoch's model), `train_args.json`,
`metrics.csv`, the plots and `report.html`. `state.safetensors` (model, optimiser and schedule,
for `--resume`) is written after each epoch and removed once the run completes, unless
`--keep-state`; a completed run cannot be resumed.

A folder that holds a run already is refused unless `--resume` or `--overwrite`; the process
holds an exclusive lock on the folder while it trains (`torso.train.run_folder`), and
`train_args.json` is written when the first epoch ends, so that a run that fails earlier leaves
no folder that looks like a run. `--resume` keeps the run's settings (`RESUME_MAY_CHANGE` may
differ) and refuses others.

Under `torchrun --nproc-per-node N -m torso train ...` the same command trains with
DistributedDataParallel (see `torso.distributed`): `--batch-size` is per process (the
global batch is N times larger), only the main process writes the run folder and prints, and
the report is measured by the main process over the whole validation set.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from torso.cli.options import (
    add_task_options,
    add_weights_arguments,
    chosen_task_options,
    fraction,
    positive_float,
    positive_int,
    pretrained_choice,
)
from torso.errors import TorsoError
from torso.numbers import image_size, non_negative_float, non_negative_int

#: The command's line in `torso --help`.
HELP = "train a model on a folder of images"

DEFAULT_BACKBONE = "resnet18"
# `torso.data.transforms.Augmentation`'s defaults (not imported: `torso --help` stays torch-free).
DEFAULT_MAX_ROTATE = 10.0
DEFAULT_MIN_SCALE = 1.0
# Peak learning rates of the head; chosen by `benchmarks/defaults.py` (see benchmarks/README.md).
FINE_TUNE_LR = 1e-2
SCRATCH_LR = 1e-2
ARGS_FILE = "train_args.json"
# What a resumed run may take from the new command line; every other option is the run's own.
#: --channels-last as the Learner's `channels_last` (None: its own choice).
CHANNELS_LAST = {"auto": None, "on": True, "off": False}
RESUME_MAY_CHANGE = ("data", "quiet", "device", "workers", "keep_state")
MAY_CHANGE_TEXT = "DATA, --quiet, --device, --workers, --keep-state"
# Not saved with a run's arguments: how this command was started, not what the run is.
NOT_STORED = ("_run", "command", "resume", "overwrite")


# -- argument types: a bad value is one line and exit 2 ---------------------------------------
def area_share(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_data_and_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `torso train` and `torso lr-find`."""
    from torso.registry import task_names

    parser.add_argument("data", help="folder of images (class folders, or images + labels CSV)")
    parser.add_argument(
        "--task",
        default="classify",
        help=f"{', '.join(task_names())} (default classify)",
    )
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"timm name (resnet34) or torchvision name (tv:resnet34); default {DEFAULT_BACKBONE}",
    )
    add_weights_arguments(
        parser,
        pretrained="start from the backbone's pretrained weights (fine-tune: head first, then all)",
        weights="start from pretrained weights in a local file (safetensors or weights-only torch)",
    )
    parser.add_argument(
        "--size", type=image_size, default=224, help="image size in pixels, 8 to 16384 (224)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="batch size (32); under torchrun per process: the global batch is N times larger",
    )
    parser.add_argument("--in-channels", type=positive_int, default=3, help="image channels (3)")
    parser.add_argument(
        "--csv", help="labels CSV (multilabel, regress), relative to DATA or a path"
    )
    parser.add_argument(
        "--valid-pct",
        type=fraction,
        default=0.2,
        help="fraction held out for validation when DATA has no valid/ folder (0.2)",
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=None, help="loader processes (auto)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for the model (default: the cores the loader workers leave free)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable or bad images instead of stopping"
    )
    parser.add_argument(
        "--min-image-size",
        type=positive_int,
        default=16,
        help="smallest side in pixels an image may have; smaller ones are bad images (16)",
    )
    parser.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="let a CSV name images outside the data folder (../x.png, absolute paths)",
    )
    parser.add_argument("--no-augment", action="store_true", help="no training augmentation")
    parser.add_argument(
        "--no-flip",
        action="store_true",
        help="no random horizontal flip (for digits, text, anything that mirroring changes)",
    )
    parser.add_argument(
        "--max-rotate",
        type=non_negative_float,
        default=DEFAULT_MAX_ROTATE,
        metavar="DEG",
        help=f"largest random rotation in degrees ({DEFAULT_MAX_ROTATE:g})",
    )
    parser.add_argument(
        "--min-scale",
        type=area_share,
        default=DEFAULT_MIN_SCALE,
        metavar="S",
        help="smallest share of the image's area the random crop keeps; 1: no crop "
        f"({DEFAULT_MIN_SCALE:g})",
    )
    parser.add_argument("--no-cache", action="store_true", help="decode images every epoch")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16", "fp16"],
        default="auto",
        help="auto: bf16/fp16 on GPUs, none on CPUs (default auto)",
    )
    add_task_options(parser)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help=HELP,
        description=(
            "Train BACKBONE with a task head on DATA and write a run folder with the model, "
            "metrics.csv, plots and report.html. With --pretrained (or --weights FILE) it "
            "fine-tunes as fastai does (head first, then everything); otherwise it trains from "
            "random weights with the one-cycle policy. "
            "Example: torso train ./pets --pretrained --backbone resnet34 --epochs 4"
        ),
    )
    add_data_and_model_arguments(parser)
    parser.add_argument("--epochs", type=positive_int, default=5, help="epochs (5)")
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"peak learning rate of the head (default {FINE_TUNE_LR:g} fine-tuning, "
        f"{SCRATCH_LR:g} from random weights)",
    )
    parser.add_argument(
        "--lr-find",
        action="store_true",
        help="run the learning-rate finder first and use its suggestion",
    )
    parser.add_argument(
        "--freeze-epochs",
        type=non_negative_int,
        default=1,
        help="fine-tuning: epochs training the head only (1)",
    )
    parser.add_argument(
        "--weight-decay", type=non_negative_float, default=0.01, help="AdamW weight decay (0.01)"
    )
    parser.add_argument(
        "--accumulate",
        type=positive_int,
        default=1,
        help="batches whose gradients add up before each step (1)",
    )
    parser.add_argument("--compile", action="store_true", help="use torch.compile")
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="memory layout of images and convolution weights: auto measures on a CPU which "
        "trains faster (timings differ between runs; give on or off for runs that must sum "
        "alike), and is on elsewhere (auto)",
    )
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics over the global batch",
    )
    parser.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=600.0,
        metavar="SECONDS",
        help="under torchrun: stop when another process does not answer for this long (600)",
    )
    parser.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help="stop after this many epochs without improvement",
    )
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument(
        "--out",
        help="run folder (default runs/<data folder name>); a folder that holds a run already "
        "is refused unless --resume or --overwrite",
    )
    parser.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the optimiser state (state.safetensors) once the run completes; by default "
        "only a killed run keeps it, for --resume",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (its model, state, metrics, plots and report go first)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN",
        help="continue the killed run in RUN (or in --out) from its last finished epoch, with "
        f"the run's own settings: only {MAY_CHANGE_TEXT} may differ (another --epochs, --lr, "
        "--size ... is refused)",
    )
    return parser


# -- helpers shared with lr-find and predict --------------------------------------------------
def check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, before any data is read, on a missing data folder or an unknown backbone."""
    from torso.models.bodies.create import check_backbone_name

    if not Path(args.data).exists():
        raise TorsoError(f"data folder '{args.data}' does not exist")
    if not Path(args.data).is_dir():
        raise TorsoError(f"data '{args.data}' is not a folder")
    if args.workers is not None and args.workers < 0:
        raise TorsoError(f"--workers must be 0 or more, got {args.workers}")
    check_backbone_name(args.backbone)
    check_batch_memory(args.batch_size, args.in_channels, args.size, args.device)


# Training keeps every layer's activations for the backward pass: measured on a CPU, one step
# of resnet18 at 224 pixels took 61 times the memory of its float32 input batch, resnet50 173.
ACTIVATION_FACTOR = 50


def check_batch_memory(batch_size: int, channels: int, size: int, device: str | None) -> None:
    """Refuse, before anything is allocated, a batch whose training step cannot fit: its
    float32 images (batch x channels x size^2 x 4 bytes) times `ACTIVATION_FACTOR`, against the
    free memory of the device (a GPU's, or the machine's for the CPU)."""
    needed = batch_size * channels * size * size * 4 * ACTIVATION_FACTOR
    available, where = available_memory(device)
    if available is not None and needed > available:
        raise TorsoError(
            f"--size {size} with --batch-size {batch_size} needs about {needed / 1e9:.1f} GB for "
            f"one training step but {where} has {available / 1e9:.1f} GB free: lower --size or "
            "--batch-size"
        )


def available_memory(device: str | None) -> tuple[int | None, str]:
    """(free bytes, a name for the place) of `device`'s memory; None when unknown."""
    import torch

    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        return None, str(device)
    if chosen.type == "cuda" and torch.cuda.is_available():
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        return torch.cuda.mem_get_info(index)[0], f"GPU {index}"
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this machine"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine"
    except (ValueError, OSError, AttributeError):
        return None, "this machine"


def load_training_data(args: argparse.Namespace):
    """`torso.data.load_data` with the command line's options (this process's share of the data
    under torchrun)."""
    from torso import distributed
    from torso.data import load_data

    samplers = distributed.shard_samplers(args.seed) if distributed.is_distributed() else {}

    dls = load_data(
        args.data,
        task=args.task,
        size=args.size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        seed=args.seed,
        valid_pct=args.valid_pct,
        augment=augmentation(args),
        cache=not args.no_cache,
        skip_bad=args.skip_bad,
        in_channels=args.in_channels,
        csv=args.csv,
        min_image_size=args.min_image_size,
        allow_outside_paths=args.allow_outside_paths,
        **samplers,
    )
    set_compute_threads(getattr(args, "threads", None), dls.train.num_workers)
    return dls


def augmentation(args: argparse.Namespace):
    """The training `Augmentation` the command line asks for (None with --no-augment)."""
    from torso.data.transforms import Augmentation

    if args.no_augment:
        return None
    return Augmentation(
        flip=not getattr(args, "no_flip", False),
        max_rotate=getattr(args, "max_rotate", DEFAULT_MAX_ROTATE),
        min_scale=getattr(args, "min_scale", DEFAULT_MIN_SCALE),
    )


def set_compute_threads(requested: int | None, loader_workers: int) -> int:
    """Set and return the number of threads torch's CPU kernels use.

    Default: the cores that the loader workers (and the other processes of a torchrun launch on
    this machine) leave free, at least one, unless OMP_NUM_THREADS says otherwise. Measured on 2
    cores with 2 loader workers (`torso demo classify --epochs 1`): 68 s with one compute thread,
    309 s with two, as OpenMP threads spin while waiting for cores the workers hold.
    """
    import torch

    if requested is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        requested = max(1, cores // processes - loader_workers)
    torch.set_num_threads(requested)
    return requested


def run_config(args, dls, task, model_stats=None):
    """The run's `RunConfig` from the command line, the data and the task (`stats`: the body's)."""
    from torso.config import RunConfig

    classes = dls.classes if dls.classes is not None else getattr(dls, "target_names", None)
    return RunConfig(
        task=task.name,
        backbone=args.backbone,
        num_outputs=dls.num_outputs,
        size=dls.size,
        in_channels=dls.in_channels,
        classes=classes,
        resize=getattr(dls, "resize", "squish"),
        stats=model_stats,
        task_options=task.options,
    )


def build_learner(args, dls, task, *, pretrained, out=None, callbacks=()):
    """The model (built by the task from the run's config) and its Learner; the config is
    complete (with the body's stats) before the Learner sees it."""
    from torso.train.learner import Learner

    config = run_config(args, dls, task)
    model = task.build_model(config, pretrained=pretrained)
    config = task.complete_config(config, model)
    # The whole validation set decides (under torchrun a process's share may be empty).
    valid = dls.valid if len(dls.valid.dataset) > 0 else None
    precision = None if args.mixed_precision == "auto" else args.mixed_precision
    return Learner(
        model,
        dls.train,
        valid,
        task=task,
        config=config,
        callbacks=callbacks,
        weight_decay=getattr(args, "weight_decay", 0.01),
        device=args.device,
        mixed_precision=precision,
        compile=getattr(args, "compile", False),
        channels_last=CHANNELS_LAST[getattr(args, "channels_last", "auto")],
        accumulate=getattr(args, "accumulate", 1),
        sync_batchnorm=getattr(args, "sync_bn", False),
        out=out,
    )


def whole_validation_loader(share):
    """A loader over the whole validation set that `share` (one process's loader) draws from."""
    from torch.utils.data import DataLoader

    return DataLoader(share.dataset, batch_size=share.batch_size, collate_fn=share.collate_fn)


def check_writable(folder: Path) -> None:
    """Create `folder` and make sure files can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".torso-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise TorsoError(
            f"cannot write to output folder '{folder}': {error.strerror or error}"
        ) from None


def default_run_folder(data: str) -> Path:
    """`runs/<data folder name>`, with `-2`, `-3`, ... if taken."""
    name = Path(data).resolve().name or "run"
    candidate = Path("runs") / name
    number = 2
    while candidate.exists():
        candidate = Path("runs") / f"{name}-{number}"
        number += 1
    return candidate


# -- the command ------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from torso import distributed

    # Under torchrun: join the other processes; any failure ends this one promptly.
    distributed.setup(args.device, timeout=getattr(args, "dist_timeout", 600.0))
    try:
        with distributed.failure_guard():
            return _train(args)
    finally:
        distributed.cleanup()


def _train(args: argparse.Namespace) -> int:
    from torso import distributed
    from torso.train.run_folder import RunLock, clear_run, is_run_folder, remove_temporary_files

    if args.resume is not None:
        out = resumed_folder(args)
        check_not_complete(out)
        args = resumed_arguments(args, out)
    else:
        out = Path(args.out) if args.out else default_run_folder(args.data)
        # Every process must use the folder the main process chose (it creates it).
        out = Path(distributed.broadcast_from_main(str(out)))
    main_process = distributed.is_main_process()
    check_inputs(args)
    if not main_process:
        return _train_in(args, out)
    check_writable(out)
    # One writer a run folder: a second `torso train` on it stops here, naming this pid.
    with RunLock(out):
        if args.resume:
            remove_temporary_files(out)  # a killed process's; the lock says none is writing
        elif is_run_folder(out):
            if not args.overwrite:
                raise TorsoError(
                    f"'{out}' holds a torso run already: --resume {out} continues it, "
                    "--overwrite replaces it, or choose another --out"
                )
            clear_run(out)
        return _train_in(args, out)


def resumed_folder(args: argparse.Namespace) -> Path:
    """The run folder that `--resume` names (`--resume RUN`, or `--resume --out RUN`)."""
    if args.overwrite:
        raise TorsoError("--resume continues a run and --overwrite replaces it: give one")
    if args.resume is True and not args.out:
        raise TorsoError("--resume needs the run folder: --resume RUN or --out RUN")
    out = Path(args.out if args.resume is True else args.resume)
    if not out.is_dir():
        raise TorsoError(f"cannot resume: run folder '{out}' does not exist")
    if not (out / ARGS_FILE).exists():
        raise TorsoError(f"cannot resume: '{out}' has no {ARGS_FILE} (not a torso run folder)")
    return out


def check_not_complete(out: Path) -> None:
    """Refuse to resume a completed run: it has its final model and no training state left."""
    from torso.train.state import STATE_FILE

    if (out / "torso.json").exists() and not (out / STATE_FILE).exists():
        raise TorsoError(
            f"cannot resume: the run in '{out}' is complete; to train "
            f"further, start a new run with --weights {out / 'model.safetensors'} and another --out"
        )


def resumed_arguments(args: argparse.Namespace, out: Path) -> argparse.Namespace:
    """The run's own arguments from `out/train_args.json`, with `RESUME_MAY_CHANGE` taken from
    this command. An option that this command sets to another value than the run's is refused
    (a resumed run continues its own schedule: more epochs, another rate or size would be a
    different run)."""
    saved = out / ARGS_FILE
    try:
        stored = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TorsoError(f"cannot resume: '{saved}' is damaged") from None
    defaults = _defaults(args.data)
    changed = [
        f"--{key.replace('_', '-')} {value} (the run's: {stored[key]})"
        for key, value in vars(args).items()
        if key in stored
        and key not in RESUME_MAY_CHANGE
        and key != "out"
        and value != defaults.get(key)
        and value != stored[key]
    ]
    if changed:
        raise TorsoError(
            f"cannot resume '{out}' with other settings: {'; '.join(changed)}; a resumed run "
            f"keeps all its options but {MAY_CHANGE_TEXT} (start a new run with another --out "
            "instead)"
        )
    current = {key: getattr(args, key) for key in RESUME_MAY_CHANGE}
    return argparse.Namespace(**{**vars(args), **stored, **current, "resume": str(out)})


def train_command(args: argparse.Namespace) -> str:
    """The `torso train` command that repeats the run of `args`: DATA, then every option
    whose value is not its default (a switch as its flag alone), quoted for a POSIX shell."""
    import shlex

    defaults = _defaults(args.data)
    words = ["torso", "train", str(args.data)]
    for key, value in vars(args).items():
        if key in NOT_STORED or key == "data" or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list | tuple):
            words += [flag, *(str(item) for item in value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _defaults(data: str) -> dict:
    """`torso train DATA`'s default arguments."""
    parser = argparse.ArgumentParser()
    return vars(add_parser(parser.add_subparsers()).parse_args([data]))


def _train_in(args: argparse.Namespace, out: Path) -> int:
    from torso import distributed
    from torso.tasks import get_task
    from torso.train.callbacks import CSVLog, EarlyStopping, Progress, SaveBest, TensorBoard
    from torso.train.callbacks.save_arguments import SaveArguments
    from torso.train.finite import NonFiniteError
    from torso.train.learner import set_seed

    main_process = distributed.is_main_process()
    task = get_task(args.task, **chosen_task_options(args))
    pretrained = False if args.resume else pretrained_choice(args)

    set_seed(args.seed)
    dls = load_training_data(args)
    task = task.with_data(dls)
    callbacks = [] if args.quiet else [Progress()]
    callbacks.append(CSVLog())
    if len(dls.valid.dataset) > 0:
        callbacks.append(SaveBest())
        if args.patience:
            callbacks.append(EarlyStopping(patience=args.patience))
    if args.tensorboard:
        callbacks.append(TensorBoard())
    if not args.resume:  # last, so that the other callbacks' saved state keeps its keys
        stored = {k: v for k, v in vars(args).items() if k not in NOT_STORED}
        callbacks.append(SaveArguments(out / ARGS_FILE, stored))
    learner = build_learner(args, dls, task, pretrained=pretrained, out=out, callbacks=callbacks)
    if not args.quiet and main_process:
        print(dls.describe(), flush=True)
        if not pretrained and not args.resume:
            print(
                "training from random weights (give --pretrained or --weights FILE to "
                "fine-tune a pretrained body)",
                flush=True,
            )

    lr_curve = None
    try:
        if args.resume:
            learner.resume()
        else:
            lr_curve = _fit(args, learner, pretrained, out)
    except NonFiniteError as error:
        kept = keep_last_good_model(learner, out) if main_process else ""
        raise NonFiniteError(f"{error}; {kept}" if kept else str(error)) from None
    learner.save_model(out)
    if not main_process:
        return 0
    if learner.valid_loader is not None and distributed.is_distributed():
        # The report's plots need every validation image: measure them all here.
        learner.valid_loader = whole_validation_loader(dls.valid)
    from torso.tools.report import write_run_report

    report = write_run_report(
        learner,
        out,
        title=f"torso train {args.data}",
        lr_curve=lr_curve,
        command=train_command(args),
    )
    final = learner.history[-1] if learner.history else {}
    hidden = {"epoch", "time", "lr", *task.per_class_metrics(learner.config)}
    shown = "  ".join(f"{k} {v:.4f}" for k, v in final.items() if k not in hidden)
    if not getattr(args, "keep_state", False):
        # Last, so that a run killed before this point can still be resumed to its end.
        drop_training_state(out)
    print(f"saved model to {out}  {shown}", flush=True)
    print(f"report: {report}", flush=True)
    return 0


def drop_training_state(out: Path) -> None:
    """Remove the training state of a completed run (the optimiser's moments take twice the
    model's size; the model, `best/`, metrics and report stay)."""
    from torso.train.state import STATE_FILE

    (out / STATE_FILE).unlink(missing_ok=True)


def _fit(args: argparse.Namespace, learner, pretrained, out: Path):
    """Train a new run (after the learning-rate finder with --lr-find); returns its curve."""
    from torso import distributed

    lr, lr_curve = args.lr, None
    if args.lr_find:
        # Every process runs the finder on its share, in step (the loss is averaged across
        # processes); fine-tuning starts with the body frozen: the rate for that first step.
        from torso.train.lr_find import find_learning_rate

        main_process = distributed.is_main_process()
        lr_curve = find_learning_rate(
            learner,
            fine_tune=bool(pretrained),
            plot=out / "lr_find.png" if main_process else None,
            quiet=args.quiet,
        )
        lr = distributed.broadcast_from_main(lr_curve.suggestion)
        if not args.quiet and main_process:
            print(f"lr_find suggests {lr:.2e}", flush=True)
    if pretrained:
        learner.fine_tune(args.epochs, lr or FINE_TUNE_LR, freeze_epochs=args.freeze_epochs)
    else:
        learner.fit_one_cycle(args.epochs, lr or SCRATCH_LR)
    return lr_curve


def keep_last_good_model(learner, out: Path) -> str:
    """After a non-finite epoch: save the weights of the last good epoch (from the training
    state) as the run's model, and say so; nothing non-finite is saved."""
    from torso.train.state import STATE_FILE, load_training_state

    path = out / STATE_FILE
    if not path.exists():
        return "no epoch finished, so no model was saved"
    tensors, info = load_training_state(path)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    learner.model.load_state_dict(weights)
    learner.save_model(out)
    return f"the model of the last good epoch ({info['epoch']}) is saved in '{out}'"
