"""The ``mmrobust`` command line: thin click commands over the library.

Every command's docstring is its ``--help``. User errors (unknown names, bad
files, bad values) end with a one-line message and exit status 1; no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mmrobust.config import RECIPES, RunConfig
from mmrobust.distributed import TIMEOUT_MINUTES, MainFailed, TeamError
from mmrobust.files import DiskFullError, FolderInUseError
from mmrobust.registry import COMMANDS, REGISTRIES, DuplicateNameError, RegistryLoadError, UnknownNameError

if TYPE_CHECKING:
    from mmrobust.results import Record

#: Seconds a rank other than 0 waits before it reports an error (see ``_Group.invoke``).
OTHER_RANK_GRACE = 5.0

USER_ERRORS = (ValueError, FileNotFoundError, UnknownNameError, NotADirectoryError, PermissionError, RegistryLoadError,
               FolderInUseError, DiskFullError, TeamError)


def _parse_value(text: str) -> Any:
    """A --defense-param value: a TOML literal (1, 0.5, true, "x") or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--defense-param")
        params[key.strip()] = _parse_value(value.strip())
    return params


class _Group(click.Group):
    """Turns user errors raised by the library into one-line messages, and adds the commands that
    contributions register (:data:`mmrobust.registry.COMMANDS`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MainFailed:  # rank 0 failed at work it did for the team, and says why
            raise click.exceptions.Exit(1) from None
        except USER_ERRORS as error:
            rank = os.environ.get("RANK", "0")
            if rank != "0":
                # Under torchrun an error that rank 0 meets too is said by rank 0 alone: torchrun stops this
                # process as soon as rank 0 exits. One of this rank's own is said after that short wait.
                time.sleep(OTHER_RANK_GRACE)
                click.echo(f"Error: rank {rank}: {error}", err=True)
                raise click.exceptions.Exit(1) from None
            raise click.ClickException(str(error)) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        try:
            added = COMMANDS.names()
        except (RegistryLoadError, DuplicateNameError) as error:  # --help works even when a contribution is broken
            logging.getLogger(__name__).warning("%s", error)
            added = []
        return sorted({*super().list_commands(ctx), *added})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in COMMANDS:
            return command
        added = COMMANDS.get(name)
        if not isinstance(added, click.Command):
            raise click.ClickException(f"command {name!r} ({COMMANDS.origin(name)}) is not a click command")
        return added


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mmrobust")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Adversarial robustness benchmark for multimodal (RGB + skeleton) action recognition.

    \b
    Typical session:
      mmrobust list                                  # what is registered
      mmrobust run --defense none --dataset synthetic
      mmrobust inspect --dataset synthetic --out sheet.png
      mmrobust model-info --preset paper --num-classes 60
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


# -- run ----------------------------------------------------------------------

def _eps_option(value: str | None) -> float | None:
    from mmrobust.protocol import parse_eps

    return None if value is None else parse_eps(value)


def _names_option(value: str | None) -> tuple[str, ...] | None:
    """A comma-separated list of names (attacks, defenses), or None when not given."""
    return None if value is None else tuple(a.strip() for a in value.split(",") if a.strip())


_collective_timeout = click.option(
    "--collective-timeout", default=TIMEOUT_MINUTES, show_default=True, type=click.FloatRange(min=0, min_open=True),
    metavar="MINUTES", help="Under torchrun, how long a rank waits for the others at a collective before it gives "
                            "up (raise it when one chunk of an attack takes longer).")


@cli.command()
@click.option("--dataset", default="synthetic", show_default=True, help="Registered dataset (see `mmrobust list`).")
@click.option("--defense", default="none", show_default=True, help="Registered defense (see `mmrobust list`).")
@click.option("--defense-param", "defense_params", multiple=True, metavar="KEY=VALUE",
              help="A defense parameter, repeatable; VALUE is a TOML literal (1, 0.5, true).")
@click.option("--preset", default="tiny", show_default=True, help="Model and input-size preset: tiny or paper.")
@click.option("--modalities", default=None, metavar="M[,M]",
              help="Train on a subset of the modalities, e.g. 'rgb' or 'skeleton' (unimodal baseline).")
@click.option("--split", default=None, help="Dataset protocol, e.g. xsub or xview for ntu60.")
@click.option("--root", default=None, type=click.Path(),
              help="A real dataset's release folder (or PYSKL pickle for ntu60), prepared with `mmrobust prepare`.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Cache for generated/prepared data [default: $MMROBUST_CACHE or ~/.cache/mmrobust].")
@click.option("--data-seed", default=0, show_default=True, type=int, help="Seed of the synthetic data generator.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Training epochs [default: the dataset's recipe].")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Initial learning rate (SGD, momentum 0.9, cosine annealing, weight decay 5e-4).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of initialisation, shuffling and dropout.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--protocol", default="standard-v1", show_default=True,
              help="Evaluation protocol: standard-v1 (the AMR paper's) or strong-v1 (AutoAttack-grade, adaptive).")
@click.option("--eps", default=None, metavar="EPS", help="Attack budget, e.g. 4/255 (changes the protocol's name).")
@click.option("--attacks", default=None, metavar="A[,A]",
              help="Attacks to run, e.g. pgd20 or fgsm,ta:APGD (changes the protocol's name).")
@click.option("--holdout", default=0.0, show_default=True, type=click.FloatRange(0, 0.5),
              help="Share of the training subjects kept out of training and scored after every epoch (clean "
                   "and PGD robust accuracy per target, in train_log.jsonl; see `mmrobust plot-training`).")
@click.option("--holdout-steps", default=10, show_default=True, type=click.IntRange(min=1),
              help="PGD steps of the held-out robust accuracy.")
@click.option("--recipe", default="scratch", show_default=True, type=click.Choice(list(RECIPES)),
              help="warm-start: begin from the trained weights of the reference defense's run of the same data, "
                   "seed and holdout beside the run directory (run it first).")
@click.option("--eval-batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Samples attacked together.")
@click.option("--test-subset", default=0, show_default=True, type=click.IntRange(min=0), metavar="PER_CLASS",
              help="Score this many test clips per class, a fixed class-stratified choice that depends on the data "
                   "alone (0: all); for protocols too costly for every clip. The record lists the clips.")
@click.option("--amp", is_flag=True, default=False,
              help="Train under bf16 autocast (GPUs; another model, recorded as such). Evaluation stays fp32.")
@click.option("--grad-checkpoint", is_flag=True, default=False,
              help="Recompute I3D's Inception blocks in the backward pass: less memory, same numbers "
                   "(see `mmrobust model-info --memory`).")
@click.option("--sync-bn", is_flag=True, default=False,
              help="Under torchrun, BatchNorm over the global batch (CUDA) instead of each rank's share.")
@_collective_timeout
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="A flat TOML file of run settings; flags given explicitly override it.")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Where the run's files go [default: runs/<dataset>/<defense>-<preset>-s<seed>].")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[CHECKPOINT]",
              help="Continue a killed run from its last checkpoint (the run directory's, or CHECKPOINT).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def run(ctx: click.Context, modalities: str | None, defense_params: tuple[str, ...], config_file: str | None,
        run_dir: str | None, resume: str | None, quiet: bool, eps: str | None, attacks: str | None,
        collective_timeout: float, **flags: Any) -> None:
    """Train a defended model, evaluate it under the protocol, write DIR/result.json.

    The evaluation is standard-v1: clean accuracy and FGSM, PGD-20 and CW∞
    (ε = 8/255) on RGB only (R), skeleton only (S) and both (RS). With
    --protocol strong-v1 it is APGD-CE, APGD-T and Square run in cascade, plus
    the defense's adaptive attacks, with attack-failure indicators
    (DIR/result-strong-v1.json).

    \b
    Under torchrun every process runs this command on its share: each batch
    of --batch-size clips is split over the processes (DistributedDataParallel),
    each test clip is attacked by one process, and rank 0 writes. A worker
    group that torchrun restarts after a failure resumes from the last
    checkpoint.

    \b
    Examples:
      mmrobust run --defense none --dataset synthetic
      mmrobust run --defense none --modalities rgb          # unimodal baseline
      mmrobust run --config run.toml --epochs 5
      mmrobust run --run-dir runs/x --resume                # continue a killed run
      torchrun --nproc-per-node 8 -m mmrobust run --defense amr --dataset ntu60 \\
          --root /data/nturgbd --preset paper --device cuda
    """
    from mmrobust.distributed import join, leave
    from mmrobust.run import default_run_dir, execute, validate

    explicit = {option: value for option, value in flags.items()
                if ctx.get_parameter_source(option) is not click.core.ParameterSource.DEFAULT}
    if modalities is not None:
        explicit["modalities"] = tuple(m.strip() for m in modalities.split(",") if m.strip())
    if defense_params:
        explicit["defense_params"] = _parse_params(defense_params)
    if eps is not None:
        explicit["eps"] = _eps_option(eps)
    if attacks is not None:
        explicit["attacks"] = _names_option(attacks)

    for option in ("root", "data_dir"):  # stored absolute: the run's config must work from any folder
        if explicit.get(option) is not None:
            explicit[option] = str(Path(explicit[option]).expanduser().absolute())
    base = RunConfig.from_toml(config_file) if config_file else RunConfig()
    config = RunConfig.from_dict({**base.to_dict(), **explicit})
    validate(config)
    directory = Path(run_dir) if run_dir else default_run_dir(config)

    team = join(config.device, collective_timeout)
    try:
        # rank 0 reads the checkpoint and hands it to the others: every rank continues the same state
        config, state = team.on_main(lambda: _starting_point(config, explicit, directory, resume))
        if team.main:
            click.echo(f"run directory: {directory}" + (f" ({team.size} processes)" if team.size > 1 else ""),
                       err=True)
        record = execute(config, directory, resume=state, progress=not quiet, team=team)
        if team.main:
            _report(record)
    finally:
        leave()


def _starting_point(config: RunConfig, explicit: dict[str, Any], directory: Path,
                    resume: str | None) -> tuple[RunConfig, dict[str, Any] | None]:
    """The configuration a run starts with and the checkpoint it continues (None: a fresh run), after
    checking the run directory. A worker group that torchrun restarted after a failure continues from
    the newest checkpoint: the run directory's, or the one ``--resume`` named if that is further on."""
    from mmrobust.distributed import restarted
    from mmrobust.run import check_run_dir, resume_config, resume_state

    state = None
    if restarted() and (directory / "checkpoint.pt").is_file():
        state = resume_state(directory, None)
        if resume:
            named = resume_state(directory, resume)
            state = named if named["epoch"] > state["epoch"] else state
    elif resume is not None:
        state = resume_state(directory, resume or None)
    if state is not None:
        config = resume_config(state, explicit, config.device)
    check_run_dir(directory, resume=state is not None)
    return config, state


def _report(record: Record) -> None:
    from mmrobust.leaderboard import record_table

    clips = f"{record.data['test_size']} test clips"
    if record.test_subset:
        clips = f"{record.metrics['n']} of the {clips} ({record.test_subset} per class)"
    click.echo(f"{record.dataset} / {record.defense} / {record.preset} ({'+'.join(record.modalities)}), "
               f"{record.protocol}, {clips}: "
               f"clean accuracy {record.metrics['clean']:.2f}%")
    click.echo(record_table(record))
    if record.path is not None and record.protocol != "standard-v1":
        click.echo(_beside_standard(record))
    click.echo(f"record: {record.path}")


def _closest(name: str, known: list[str]) -> str:
    """'did you mean X? available: ...' for an unknown name."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return (f"did you mean {close[0]!r}? " if close else "") + f"available: {', '.join(known)}"


def _beside_standard(record: "Record") -> str:
    """The worst case per target of this record beside that of the same run's standard-v1 record."""
    from mmrobust.metrics import WORST
    from mmrobust.results import Record, RecordError

    try:
        standard = Record.load(record.path.parent / "result.json")
    except RecordError:
        return "no standard-v1 record of this run to compare with"
    ours, theirs = record.metrics["attacks"].get(WORST, {}), standard.metrics["attacks"].get(WORST, {})
    codes = [c for c in ours if c not in ("avg", "ri", "ci") and c in theirs]
    pairs = ", ".join(f"✗{c} {theirs[c]:.2f} -> {ours[c]:.2f}" for c in codes)
    return f"worst case, standard-v1 -> {record.protocol}: {pairs}"


# -- eval ---------------------------------------------------------------------

@cli.command(name="eval")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="A finished run (holds config.json and model.pt).")
@click.option("--protocol", default=None,
              help="standard-v1 or strong-v1 [default: the run's]; another protocol starts from its own ε and attacks.")
@click.option("--eps", default=None, metavar="EPS", help="Attack budget, e.g. 4/255 (changes the protocol's name).")
@click.option("--attacks", default=None, metavar="A[,A]", help="Attacks to run, e.g. pgd20 or fgsm,ta:APGD.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: the run's].")
@click.option("--eval-batch-size", default=None, type=click.IntRange(min=1))
@click.option("--test-subset", default=None, type=click.IntRange(min=0), metavar="PER_CLASS",
              help="Score this many test clips per class, a fixed class-stratified choice that depends on the data "
                   "alone (0: all) [default: the run's]; for protocols too costly for every clip.")
@_collective_timeout
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_(run_dir: str, protocol: str | None, eps: str | None, attacks: str | None, device: str | None,
          eval_batch_size: int | None, test_subset: int | None, collective_timeout: float, quiet: bool) -> None:
    """Evaluate a trained run again, without retraining.

    With the default settings the record is DIR/result.json; under another
    protocol, or with --eps or --attacks, it is DIR/result-<protocol>.json,
    never ranked with standard-v1. strong-v1 also attacks the defense's
    declared views and, when a trained `none` run of the same data and seed
    sits beside DIR, transfers its examples; the record carries
    attack-failure indicators, and the report sets its worst case beside
    standard-v1's. An interrupted evaluation resumes from the finished cells.

    \b
    Under torchrun the chunks of test clips are shared out over the processes,
    each attacked once, and the outcomes gathered: the record's per-sample
    outcomes are those of one process on the same kind of device.

    \b
    Examples:
      mmrobust eval --run-dir runs/synthetic/none-tiny-s0
      mmrobust eval --run-dir runs/synthetic/amr-tiny-s0 --protocol strong-v1
      mmrobust eval --run-dir runs/synthetic/amr-tiny-s0 --protocol strong-v1 --test-subset 15
      mmrobust eval --run-dir runs/synthetic/none-tiny-s0 --eps 4/255 --attacks pgd20
      torchrun --nproc-per-node 8 -m mmrobust eval --run-dir runs/ntu60-xsub/amr-paper-s0
    """
    from mmrobust.distributed import join, leave
    from mmrobust.run import reevaluate, run_device

    directory = Path(run_dir)
    team = join(device or run_device(directory), collective_timeout)
    try:
        record = reevaluate(directory, protocol=protocol, eps=_eps_option(eps), attacks=_names_option(attacks),
                            device=device, batch_size=eval_batch_size, test_subset=test_subset,
                            progress=not quiet, team=team)
        if team.main:
            _report(record)
    finally:
        leave()


# -- list ---------------------------------------------------------------------

@cli.command(name="list")
@click.argument("kind", required=False, type=click.Choice(sorted(REGISTRIES)))
def list_(kind: str | None) -> None:
    """Print what is registered: datasets, backbones, defenses, attacks; then presets and protocols.

    \b
    Examples:
      mmrobust list
      mmrobust list defense
    """
    from mmrobust.presets import PRESETS

    for name, registry in REGISTRIES.items():
        if kind and name != kind:
            continue
        click.echo(f"{name}s:")
        entries = registry.names()
        for entry in entries:
            click.echo(f"  {entry:<16} {registry.origin(entry)}")
            declared = getattr(registry.get(entry), "modalities", ())
            if isinstance(declared, tuple) and declared and all(hasattr(m, "code") for m in declared):
                click.echo(f"  {'':<16} modalities: " + ", ".join(f"{m.name} ({m.code}, {m.display})"
                                                                 for m in declared))
        for prefix in registry.families():
            click.echo(f"  {prefix + '<name>':<16} any name of the {prefix[:-1]} family, made on demand")
        if not entries:
            click.echo("  (none)")
    if not kind:
        added = COMMANDS.names()
        if added:
            click.echo("commands added by contributions:")
            for name in added:
                click.echo(f"  {name:<16} {COMMANDS.origin(name)}")
        click.echo("presets:")
        for preset in PRESETS.values():
            click.echo(f"  {preset.name:<16} rgb {preset.rgb_frames}x{preset.rgb_size}x{preset.rgb_size}, "
                       f"skeleton {preset.skeleton_frames} frames")
        from fractions import Fraction

        from mmrobust.protocol import PROTOCOLS

        click.echo("protocols:")
        for protocol in PROTOCOLS.values():
            kind = "cascade, adaptive" if protocol.cascade and protocol.adaptive else "every attack on every sample"
            eps = Fraction(protocol.eps).limit_denominator(1000)
            click.echo(f"  {protocol.name:<16} eps {eps}; "
                       f"{', '.join(a.key for a in protocol.attacks)} ({kind})")


# -- model-info -----------------------------------------------------------------

def _batch_sizes_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """A comma-separated list of positive batch sizes, or None when not given."""
    if value is None:
        return None
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, e.g. 1,8,16; got {value!r}")
    return sizes


@cli.command(name="model-info")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--num-classes", default=60, show_default=True, type=click.IntRange(min=2))
@click.option("--joints", default=25, show_default=True, type=click.IntRange(min=1), help="Skeleton joints V.")
@click.option("--persons", default=2, show_default=True, type=click.IntRange(min=1), help="Skeleton persons M.")
@click.option("--coords", default=3, show_default=True, type=click.IntRange(min=1), help="Coordinates per joint C.")
@click.option("--memory", is_flag=True,
              help="Estimate the peak memory of a training step and an attack step instead (see below).")
@click.option("--batch-sizes", default=None, metavar="B[,B]", callback=_batch_sizes_option,
              help="Batch sizes per process for --memory (implies it) [default: 1,2,4,8,16].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def model_info(preset: str, num_classes: int, joints: int, persons: int, coords: int, memory: bool,
               batch_sizes: tuple[int, ...] | None, as_json: bool) -> None:
    """Show each branch's stages with output shapes and parameter counts.

    A branch's `parameters` count is its backbone without the classifier; the
    fusion head is listed on its own.

    With --memory, print instead the estimated peak memory (GiB, float32) of
    one process per batch size, without and with checkpointed blocks
    (`mmrobust run --grad-checkpoint`): `train` is a clean training step (SGD
    with momentum), `attack` one step of an attack in eval mode on every
    modality (what evaluation needs), `pgd-at` a step of PGD adversarial
    training, the larger of its attack and its training forward+backward plus
    the optimiser's state. The model runs on PyTorch's meta device, so nothing
    is allocated; the CUDA context, cuDNN workspaces and allocator
    fragmentation come on top. With --json the sizes are in bytes, part by part.

    \b
    Examples:
      mmrobust model-info --preset paper --num-classes 60
      mmrobust model-info --preset paper --num-classes 60 --json
      mmrobust model-info --preset paper --memory
      mmrobust model-info --preset paper --memory --batch-sizes 8,16 --json
    """
    skeleton_shape = (coords, None, joints, persons)
    if memory or batch_sizes is not None:
        _print_memory(preset, num_classes, skeleton_shape, batch_sizes or (1, 2, 4, 8, 16), as_json)
        return
    from mmrobust.info import describe_model

    info = describe_model(preset, num_classes, skeleton_shape=skeleton_shape)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from tabulate import tabulate

    for modality, branch in info["branches"].items():
        click.echo(f"\n{modality}: {branch['backbone']} {branch['options']}, input {tuple(branch['input_shape'])}")
        rows = [(s["name"], "×".join(map(str, s["shape"])), f"{s['parameters']:,}") for s in branch["stages"]]
        rows.append(("embedding", str(branch["embedding_dim"]), f"{branch['parameters']:,}"))
        click.echo(tabulate(rows, headers=["stage", "output (C×…)", "parameters"], colalign=("left", "left", "right")))
    click.echo(f"\nfusion head: {info['head']['parameters']:,} parameters; total {info['total_parameters']:,}")


def _print_memory(preset: str, num_classes: int, skeleton_shape: tuple[int, int | None, int, int],
                  batch_sizes: tuple[int, ...], as_json: bool) -> None:
    from mmrobust.memory import estimate_memory

    estimate = estimate_memory(preset, num_classes, batch_sizes, skeleton_shape=skeleton_shape)
    if as_json:
        click.echo(json.dumps(estimate, indent=2))
        return
    from tabulate import tabulate

    def gib(n: int) -> str:
        return f"{n / 2**30:.2f}"

    steps = (("training_step", "train"), ("attack_step", "attack"), ("adversarial_training_step", "pgd-at"))
    modes = list(dict.fromkeys(row["checkpointed"] for row in estimate["rows"]))
    by_batch = {(row["batch_size"], row["checkpointed"]): row for row in estimate["rows"]}
    headers = ["batch", *(label + (" +ckpt" if mode else "") for _, label in steps for mode in modes)]
    table = [(b, *(gib(by_batch[b, mode][key]) for key, _ in steps for mode in modes))
             for b in dict.fromkeys(row["batch_size"] for row in estimate["rows"])]
    inputs = ", ".join(f"{m} {'×'.join(map(str, s))}" for m, s in estimate["input_shapes"].items())
    click.echo(f"Estimated peak memory per process, GiB ({estimate['preset']} preset, {inputs}):")
    click.echo(tabulate(table, headers=headers, disable_numparse=True, colalign=("right",) * len(headers)))
    first = estimate["rows"][0]
    click.echo(f"Of which model state {gib(first['model'])}, gradients {gib(first['gradients'])}, momentum "
               f"{gib(first['optimizer_state'])} (train, pgd-at). +ckpt: {estimate['checkpointable_blocks']} "
               "blocks checkpointed.\nNot included: the CUDA context, cuDNN workspaces, allocator fragmentation.")


# -- inspect ------------------------------------------------------------------

@cli.command()
@click.option("--dataset", default="synthetic", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--split", "part", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--per-class", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--preset", default="tiny", show_default=True)
@click.option("--root", default=None, type=click.Path(file_okay=False))
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--data-seed", default=0, show_default=True, type=int)
def inspect(dataset: str, out: str, part: str, per_class: int, preset: str, root: str | None,
            data_dir: str | None, data_seed: int) -> None:
    """Draw a contact sheet of a few clips with the skeleton overlaid.

    \b
    Example:
      mmrobust inspect --dataset synthetic --out sheet.png
    """
    from mmrobust.run import load_data
    from mmrobust.sheet import contact_sheet

    config = RunConfig(dataset=dataset, preset=preset, root=root, data_dir=data_dir, data_seed=data_seed)
    path = contact_sheet(load_data(config), out, split=part, per_class=per_class)
    click.echo(f"wrote {path}")


# -- plot-training ------------------------------------------------------------

@cli.command("plot-training")
@click.option("--run-dir", "run_dirs", required=True, multiple=True, type=click.Path(file_okay=False),
              help="A run directory; repeat it to draw several runs on one figure.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="PNG to write (an SVG goes beside it) [default: <first run dir>/training.png].")
def plot_training(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Draw training curves from each run's train_log.jsonl: loss, and accuracies per epoch.

    Runs trained with --holdout also show clean and PGD robust accuracy on
    the held-out subjects after every epoch, and a line says whether the last
    quarter of epochs moved them by less than one point (converged: the
    least-squares trend over that quarter, see `mmrobust.training.convergence`).

    \b
    Examples:
      mmrobust run --defense at-rs --holdout 0.2 --epochs 16
      mmrobust plot-training --run-dir runs/synthetic/at-rs-tiny-s0
      mmrobust plot-training --run-dir runs/a --run-dir runs/b --out compare.png
    """
    from mmrobust.training_plot import describe, plot_training as draw, read_log

    for run_dir in run_dirs:
        click.echo(f"{run_dir}: {describe(read_log(Path(run_dir)))}")
    written = draw([Path(d) for d in run_dirs], Path(out) if out else Path(run_dirs[0]) / "training.png")
    click.echo(f"wrote {', '.join(map(str, written))}", err=True)


# -- leaderboard --------------------------------------------------------------

@cli.command()
@click.option("--dataset", default=None, help="Only this dataset [default: every dataset with records].")
@click.option("--protocol", default="standard-v1", show_default=True, help="standard-v1 or strong-v1 (or a changed one).")
@click.option("--attack", default=None,
              help="Attack whose ✗R/✗S/✗RS/Avg/RI are shown, or 'worst' [default: pgd20 for standard-v1, worst "
                   "for strong-v1].")
@click.option("--format", "fmt", default="md", show_default=True, type=click.Choice(["md", "csv", "html"]),
              help="What to print; all three files are written.")
@click.option("--records", "sources", multiple=True, type=click.Path(exists=True),
              help="Record files or folders, repeatable [default: runs/ and leaderboards/].")
@click.option("--out", default="leaderboards", show_default=True, type=click.Path(file_okay=False),
              help="Folder for <dataset>/<protocol>.{md,csv,html}.")
@click.option("--claims", is_flag=True,
              help="Print the AMR paper's Table-2 claims judged on the records (standard-v1, and strong-v1 where "
                   "there are its records) and write <out>/<dataset>/claims.md instead of the table.")
def leaderboard(dataset: str | None, protocol: str, attack: str, fmt: str, sources: tuple[str, ...],
                out: str, claims: bool) -> None:
    """Rank every evaluated record, per dataset, under one protocol.

    One row per defense: records that differ only in the training seed are
    averaged, each number with its spread over seeds, and a second table
    gives 95 % intervals over seeds and test samples (a two-level bootstrap
    of the per-sample outcomes). Sorted by robust Avg under --attack; "vs
    above" says whether a row is significantly below the one above it (<) or
    not (≈), by a paired bootstrap test. Records of another protocol (changed
    ε or attacks) are never mixed in. For ntu60 and imigue the paper's own
    numbers appear as rows marked "reported".

    \b
    Examples:
      mmrobust leaderboard
      mmrobust leaderboard --dataset synthetic --attack cw30 --format csv
      mmrobust leaderboard --dataset synthetic --claims
    """
    import warnings

    from mmrobust.leaderboard import RecordWarning, build_table, load_records, render, write_leaderboard

    paths = [Path(p) for p in sources] or [p for p in (Path("runs"), Path(out)) if p.exists()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecordWarning)
        records = load_records(paths)
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    available = sorted({r.dataset for r in records if r.protocol == protocol})
    if not available:
        raise click.ClickException(f"no {protocol} records found under {', '.join(map(str, paths)) or 'runs/'}; "
                                   "run `mmrobust run` first")
    if dataset is not None and dataset not in available:
        raise click.ClickException(f"no {protocol} records for dataset {dataset!r}; {_closest(dataset, available)}")
    datasets = [dataset] if dataset else available
    if claims:
        from mmrobust.claims import render as render_claims
        from mmrobust.claims import report_protocols, write_claims

        for name in datasets:
            click.echo(render_claims(report_protocols(records, name)))
            click.echo(f"wrote {write_claims(records, out, name)}", err=True)
        return
    tables = {}
    for name in datasets:  # every table is built (and --attack checked) before any file is written
        chosen = [r for r in records if r.dataset == name and r.protocol == protocol]
        attacks = sorted({key for r in chosen for key in r.metrics["attacks"]})
        if attack is not None and attack not in attacks:
            raise click.ClickException(f"no record of {name} under {protocol} has attack {attack!r}; "
                                       f"{_closest(attack, attacks)}")
        tables[name] = build_table(records, name, protocol=protocol, attack=attack)
    for name, table in tables.items():
        written = write_leaderboard(table, out, name, protocol)
        click.echo(render(table, fmt))
        click.echo(f"wrote {', '.join(str(p) for p in written)}", err=True)


# -- sweep --------------------------------------------------------------------

@cli.command()
@click.option("--dataset", default="synthetic", show_default=True)
@click.option("--defenses", default=None, metavar="D[,D]", help="Defenses to run [default: every registered one].")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--seeds", "seeds_option", default=None, metavar="S [S ...]",
              help="Training seeds, each a full set of runs: `--seeds 0 1 2` or `--seeds 0,1,2` [default: 0].")
@click.option("--seed", default=None, type=int, help="One training seed (the same as --seeds S).")
@click.option("--device", default="auto", show_default=True)
@click.option("--runs", "runs_dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where the run directories go.")
@click.option("--out", default="leaderboards", show_default=True, type=click.Path(file_okay=False),
              help="Leaderboard folder; the records behind it are copied to <out>/<dataset>/records/.")
@click.option("--protocols", default=None, metavar="P[,P]",
              help="Protocols to evaluate under besides standard-v1, e.g. strong-v1 (each gets its table).")
@click.option("--test-subset", default=0, show_default=True, type=click.IntRange(min=0), metavar="PER_CLASS",
              help="Test clips per class that the --protocols evaluations score, a fixed class-stratified choice "
                   "(0: all); standard-v1 always scores every clip.")
@click.option("--recipe", default="scratch", show_default=True, type=click.Choice(list(RECIPES)),
              help="Training recipe of every defense but the reference, which trains from scratch first.")
@click.option("--holdout", default=0.0, show_default=True, type=click.FloatRange(0, 0.5),
              help="Share of training subjects held out and scored every epoch (see `run --help`).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.argument("more_seeds", nargs=-1, type=int, metavar="")
def sweep(dataset: str, defenses: str | None, preset: str, seeds_option: str | None, seed: int | None,
          device: str, runs_dir: str, out: str, protocols: str | None, test_subset: int, recipe: str,
          holdout: float, quiet: bool, more_seeds: tuple[int, ...]) -> None:
    """Run every defense on one dataset, then write its leaderboard with the records behind it.

    Each training seed is a full set of runs (runs/<dataset>/<defense>-<preset>-s<seed>);
    the leaderboard shows one row per defense with the mean over seeds, their
    spread and 95 % intervals over seeds and test samples, and
    <out>/<dataset>/claims.md judges the AMR paper's Table-2 claims on them.
    Finished runs are kept (their record is reused), killed ones resume, so the
    command can be re-run until everything is done. A finished run of other
    data (an older synthetic generator, say) is refused, never mixed in: move
    it away or pass another --runs folder. Last, it writes
    <out>/<dataset>/canary.json: short exact runs of every defense and the
    digests of the records, which the test suite checks so that a change that
    moves any number cannot land beside records that still show the old ones.

    \b
    Examples:
      mmrobust sweep --dataset synthetic
      mmrobust sweep --dataset synthetic --seeds 0 1 2
      mmrobust sweep --dataset synthetic --protocols strong-v1
      mmrobust sweep --dataset synthetic --seeds 0 --protocols strong-v1 --test-subset 15
    """
    _one_process("sweep")
    from mmrobust.leaderboard import render
    from mmrobust.sweep import sweep as run_sweep

    seeds = _seeds(seeds_option, seed, more_seeds)
    table = run_sweep(dataset, _names_option(defenses) or (), preset=preset, seeds=seeds, device=device,
                      runs_dir=Path(runs_dir), out=Path(out), protocols=_names_option(protocols) or (),
                      test_subset=test_subset, recipe=recipe, holdout=holdout, progress=not quiet,
                      say=lambda line: click.echo(line, err=True))
    click.echo(render(table, "md"))


def _seeds(option: str | None, seed: int | None, more: tuple[int, ...]) -> list[int]:
    """The seeds of `--seeds 0 1 2`, `--seeds 0,1,2` or `--seed 0` (default 0), checked."""
    if more and option is None:
        raise click.UsageError(f"unexpected argument {more[0]}; seeds go after --seeds (--seeds 0 1 2)")
    if option is not None and seed is not None:
        raise click.UsageError("give --seeds or --seed, not both")
    if option is None:
        return [0 if seed is None else seed]
    try:
        seeds = [int(part) for part in option.replace(",", " ").split()] + list(more)
    except ValueError:
        raise click.BadParameter(f"{option!r} is not a list of integers, e.g. `--seeds 0 1 2`",
                                 param_hint="--seeds") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise click.BadParameter(f"seeds must be distinct non-negative integers, got {seeds}",
                                 param_hint="--seeds")
    return seeds


# -- study ----------------------------------------------------------------------------

class _Variadic(click.Command):
    """A command whose multi-value options take their values one after another (``--values 0.1 0.5 1``), as
    well as repeated or comma-separated."""

    def __init__(self, *args: Any, variadic: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variadic = variadic

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        expanded: list[str] = []
        current = None
        for arg in args:
            if arg.startswith("--"):
                name = arg.partition("=")[0]
                current = name if name in self.variadic else None
                expanded += [name, arg.partition("=")[2]] if current and "=" in arg else [arg]
            elif current is not None and expanded[-1] != current:
                expanded += [current, arg]
            else:
                expanded.append(arg)
        return super().parse_args(ctx, expanded)


def _split_values(values: tuple[str, ...]) -> list[str]:
    return [part for value in values for part in value.replace(",", " ").split()]


def _one_process(command: str) -> None:
    """Refuse to run ``command`` under torchrun: it starts many runs, each of which would race its twins."""
    from mmrobust.distributed import launched

    if launched():
        raise click.ClickException(f"`mmrobust {command}` runs as one process; under torchrun use `mmrobust run` "
                                   "and `mmrobust eval`, one run at a time")


def _study_command(name: str) -> click.Command:
    """``mmrobust study NAME``: the common options, then one per field of the study's ``Params``."""
    from mmrobust.study import build_study, run_study

    study = build_study(name)
    fields = dataclasses.fields(study.Params)
    options = [
        click.Option(["--dataset"], default="synthetic", show_default=True, help="Registered dataset."),
        click.Option(["--preset"], default="tiny", show_default=True),
        click.Option(["--seeds"], multiple=True, metavar="S [S ...]",
                     help="Training seeds; each repeats every run [default: 0]."),
        click.Option(["--split"], default=None, help="Dataset protocol, e.g. xsub."),
        click.Option(["--root"], default=None, type=click.Path(), help="A real dataset's release folder."),
        click.Option(["--device"], default="auto", show_default=True),
        click.Option(["--recipe"], default="scratch", show_default=True, type=click.Choice(list(RECIPES)),
                     help="Training recipe of every run but the reference defense's (as `sweep --recipe`)."),
        click.Option(["--holdout"], default=0.0, show_default=True, type=click.FloatRange(0, 0.5),
                     help="Share of training subjects held out and scored every epoch (see `run --help`)."),
        click.Option(["--runs", "runs_dir"], default="runs", show_default=True, type=click.Path(file_okay=False),
                     help="Where the run directories go (finished runs there are reused)."),
        click.Option(["--out"], default="leaderboards", show_default=True, type=click.Path(file_okay=False),
                     help="The study goes to <out>/<dataset>/studies/."),
        click.Option(["--quiet"], is_flag=True, help="No progress bars."),
    ]
    variadic = ["--seeds"]
    for field in fields:
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if isinstance(field.default, bool):
            options.append(click.Option([f"{flag}/--no-{flag[2:]}", field.name], default=field.default,
                                        show_default=True, help=help_text))
        elif isinstance(field.default, tuple):
            variadic.append(flag)
            shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in field.default)
            options.append(click.Option([flag, field.name], multiple=True, metavar="V [V ...]",
                                        help=f"{help_text} [default: {shown}]"))
        else:
            options.append(click.Option([flag, field.name], default=field.default, show_default=True,
                                        type=type(field.default), help=help_text))

    def callback(dataset: str, preset: str, seeds: tuple[str, ...], split: str | None, root: str | None,
                 device: str, recipe: str, holdout: float, runs_dir: str, out: str, quiet: bool,
                 **values: Any) -> None:
        _one_process("study")
        chosen = {}
        for field in fields:
            value = values[field.name]
            if isinstance(field.default, tuple):
                if not value:
                    continue
                kind = type(field.default[0]) if field.default else str
                try:
                    value = tuple(kind(v) for v in _split_values(value))
                except ValueError:
                    raise click.BadParameter(f"{' '.join(value)!r} are not {kind.__name__} values",
                                             param_hint="--" + field.name.replace("_", "-")) from None
            chosen[field.name] = value
        chosen_seeds = _seeds(" ".join(_split_values(seeds)) or None, None, ())
        paths = run_study(name, dataset=dataset, preset=preset, seeds=chosen_seeds, params=chosen, device=device,
                          split=split, root=root, recipe=recipe, holdout=holdout, runs_dir=Path(runs_dir),
                          out=Path(out), progress=not quiet, say=lambda line: click.echo(line, err=True))
        markdown = next(p for p in paths if p.suffix == ".md")
        click.echo(markdown.read_text())
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)

    doc = (sys.modules[type(study).__module__].__doc__ or study.title).strip()
    doc = doc.replace("``", "`").replace("::\n\n", ":\n\n\b\n")  # the example keeps its lines
    return _Variadic(name, params=options, callback=callback, help=doc, short_help=study.title,
                     variadic=tuple(variadic))


class _Studies(click.Group):
    """The registered studies as subcommands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from mmrobust.registry import STUDIES

        return STUDIES.names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from mmrobust.registry import STUDIES

        if name not in STUDIES:
            try:
                STUDIES.get(name)
            except UnknownNameError as error:
                raise click.UsageError(str(error), ctx) from None
        return _study_command(name)


@cli.group(cls=_Studies)
def study() -> None:
    """Run one of the AMR paper's studies: train what it needs, evaluate, write its table and plot.

    Each study reuses finished runs of the same configuration under --runs (a
    sweep's runs serve too), and writes <out>/<dataset>/studies/<study>.{json,md,csv,png,svg}
    with the records it used in <out>/<dataset>/studies/records/. --seeds
    repeats every run per training seed; tables then show mean ± spread and
    plots a band. A new study is one file in studies/ (see CONTRIBUTING.md).

    \b
    Examples:
      mmrobust study --help                   # the registered studies
      mmrobust study NAME --help              # what one computes, its options, an example
      mmrobust study NAME --seeds 0 1 2       # over three training seeds
    """


# -- reproduce --------------------------------------------------------------------

@cli.command()
@click.argument("record_file", metavar="RECORD", type=click.Path(dir_okay=False))
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Where the re-run goes [default: a temporary folder, removed afterwards].")
@click.option("--tolerance", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Percentage points each metric may move when the environment differs from the record's; "
                   "on the record's own environment every number must be equal.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reproduce(record_file: str, run_dir: str | None, tolerance: float, quiet: bool) -> None:
    """Re-run a result record from scratch and compare every metric with the stored one.

    Trains and evaluates the record's configuration again with the record's
    thread count, then prints each metric beside the stored one. On the
    environment the record names (machine, kernels, threads, torch) every
    metric and every per-sample outcome must be identical; elsewhere each
    metric may move by --tolerance points, and the differences are named.
    Exit status 0 only when everything matches.

    \b
    Examples:
      mmrobust reproduce leaderboards/synthetic/records/amr-tiny-s0.json
      mmrobust reproduce runs/synthetic/none-tiny-s0/result.json --run-dir /tmp/again
    """
    import shutil
    import tempfile

    from tabulate import tabulate

    from mmrobust.run import reproduce as rerun

    target = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="mmrobust-reproduce-")) / "run"
    try:
        comparison = rerun(Path(record_file), target, tolerance=tolerance, progress=not quiet)
    finally:
        if run_dir is None:
            shutil.rmtree(target.parent, ignore_errors=True)
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    rows = [(name, cell(stored), cell(again), "" if ok else "✗") for name, stored, again, ok in comparison.rows]
    click.echo(tabulate(rows, headers=["metric", "stored", "reproduced", ""], disable_numparse=True,
                        colalign=("left", "right", "right", "left")))
    if comparison.environment:
        click.echo("environment differs from the record's: " + "; ".join(comparison.environment))
        click.echo(f"tolerance: {comparison.tolerance:g} percentage points per metric")
    else:
        click.echo("environment: the record's own (bit-exact comparison)")
    if comparison.outcome_mismatches is not None:
        click.echo(f"per-sample outcomes differing: {comparison.outcome_mismatches}")
    failed = [name for name, *_, ok in comparison.rows if not ok]
    if not comparison.matches:
        detail = f"{len(failed)} metric(s) differ ({', '.join(failed[:5])})" if failed else \
            f"{comparison.outcome_mismatches} per-sample outcomes differ"
        raise click.ClickException(f"{record_file} does not reproduce: {detail}")
    click.echo(f"{record_file} reproduces: {len(comparison.rows)} metrics match")


# -- prepare ------------------------------------------------------------------

@cli.command(name="prepare")
@click.option("--dataset", required=True, help="A dataset with a prepare step (ntu60, imigue).")
@click.option("--root", required=True, type=click.Path(exists=True),
              help="The release as its archives extract (NTU: holds nturgb+d_skeletons/ and nturgb+d_rgb/).")
@click.option("--preset", default="tiny", show_default=True, help="Input sizes to prepare for (tiny or paper).")
@click.option("--rgb-frames", default=None, type=click.IntRange(min=1),
              help="RGB frames per clip [default: the preset's].")
@click.option("--rgb-size", default=None, type=click.IntRange(min=1),
              help="RGB frame side in pixels [default: the preset's].")
@click.option("--skeleton-frames", default=None, type=click.IntRange(min=1),
              help="Skeleton frames per clip [default: the preset's].")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Cache folder [default: $MMROBUST_CACHE or ~/.cache/mmrobust].")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Decoding processes.")
@click.option("--strict", is_flag=True, help="Stop at the first unusable sample instead of skipping it.")
@click.option("--replace", is_flag=True,
              help="Prepare again over a complete cache whose release has changed (else it is left as it is).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare_(dataset: str, root: str, preset: str, rgb_frames: int | None, rgb_size: int | None,
             skeleton_frames: int | None, data_dir: str | None, workers: int, strict: bool, replace: bool,
             quiet: bool) -> None:
    """Turn a dataset's raw release into the compact cache that runs read.

    Resumable: a killed prepare continues where it stopped when run again with
    the same arguments. Unusable samples (truncated files, undecodable video,
    NaN joints, ...) are skipped and listed with their reason in the manifest.
    A complete cache is never overwritten by a changed release unless
    --replace is given.

    \b
    Examples:
      mmrobust prepare --dataset ntu60 --root /data/nturgbd --preset paper --workers 8
      mmrobust run --defense amr --dataset ntu60 --split xsub --root /data/nturgbd --preset paper --device cuda
    """
    from mmrobust.datasets.prepare import prepare
    from mmrobust.presets import get_preset

    request = dataclasses.replace(get_preset(preset).data_request(cache_dir=data_dir, progress=not quiet),
                                  replace=replace)
    sizes = {k: v for k, v in (("rgb_frames", rgb_frames), ("rgb_size", rgb_size),
                               ("skeleton_frames", skeleton_frames)) if v is not None}
    if sizes:  # sizes of no preset: the cache is named by them alone
        request = dataclasses.replace(request, preset=None, **sizes)
    try:
        manifest = prepare(dataset, root, request, workers=workers, strict=strict)
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; run the same command again to resume") from None
    except (RuntimeError, FileExistsError) as error:  # another prepare holds the cache; a cache left as it is
        raise click.ClickException(str(error)) from None
    skipped = manifest.get("skipped", [])
    click.echo(f"prepared {dataset} from {root}: {manifest['num_samples']} samples, {len(skipped)} skipped")
    for split, parts in manifest["splits"].items():
        click.echo(f"  {split}: " + ", ".join(f"{part} {info['count']}" for part, info in parts.items()))
    for reason, count in manifest.get("skipped_by_kind", {}).items():
        click.echo(f"  skipped ({reason}): {count}")


def main() -> None:
    cli(prog_name="mmrobust")


if __name__ == "__main__":
    sys.exit(main())
