"""The ``mmrobust`` command line: thin click commands over the library.

Every command's docstring is its ``--help``. User errors (unknown names, bad
files, bad values) end with a one-line message and exit status 1; no traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from mmrobust.config import RunConfig
from mmrobust.registry import REGISTRIES, UnknownNameError

USER_ERRORS = (ValueError, FileNotFoundError, UnknownNameError, NotADirectoryError, PermissionError)


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
    """Turns user errors raised by the library into one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            raise click.ClickException(str(error)) from None


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

_RUN_FLAGS = {  # CLI option name -> RunConfig field
    "dataset": "dataset", "split": "split", "root": "root", "data_dir": "data_dir", "data_seed": "data_seed",
    "defense": "defense", "preset": "preset", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "seed": "seed", "device": "device",
}


@cli.command()
@click.option("--dataset", default="synthetic", show_default=True, help="Registered dataset (see `mmrobust list`).")
@click.option("--defense", default="none", show_default=True, help="Registered defense (see `mmrobust list`).")
@click.option("--defense-param", "defense_params", multiple=True, metavar="KEY=VALUE",
              help="A defense parameter, repeatable; VALUE is a TOML literal (1, 0.5, true).")
@click.option("--preset", default="tiny", show_default=True, help="Model and input-size preset: tiny or paper.")
@click.option("--modalities", default=None, metavar="M[,M]",
              help="Train on a subset of the modalities, e.g. 'rgb' or 'skeleton' (unimodal baseline).")
@click.option("--split", default=None, help="Dataset protocol, e.g. xsub or xview for ntu60.")
@click.option("--root", default=None, type=click.Path(file_okay=False), help="Folder of a real dataset's release.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Cache for generated/prepared data [default: $MMROBUST_CACHE or ~/.cache/mmrobust].")
@click.option("--data-seed", default=0, show_default=True, type=int, help="Seed of the synthetic data generator.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Training epochs [default: the dataset's recipe].")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Initial learning rate (SGD, momentum 0.9, cosine annealing, weight decay 5e-4).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of initialisation, shuffling and dropout.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="A flat TOML file of run settings; flags given explicitly override it.")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Where the run's files go [default: runs/<dataset>/<defense>-<preset>-s<seed>].")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[CHECKPOINT]",
              help="Continue a killed run from its last checkpoint (the run directory's, or CHECKPOINT).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def run(ctx: click.Context, modalities: str | None, defense_params: tuple[str, ...], config_file: str | None,
        run_dir: str | None, resume: str | None, quiet: bool, **flags: Any) -> None:
    """Train a defended model and evaluate it; write DIR/result.json.

    \b
    Examples:
      mmrobust run --defense none --dataset synthetic
      mmrobust run --defense none --modalities rgb          # unimodal baseline
      mmrobust run --config run.toml --epochs 5
      mmrobust run --run-dir runs/x --resume                # continue a killed run
    """
    from mmrobust.run import check_run_dir, default_run_dir, execute, resume_state

    explicit = {field: flags[option] for option, field in _RUN_FLAGS.items()
                if ctx.get_parameter_source(option) is not click.core.ParameterSource.DEFAULT}
    if modalities is not None:
        explicit["modalities"] = tuple(m.strip() for m in modalities.split(",") if m.strip())
    if defense_params:
        explicit["defense_params"] = _parse_params(defense_params)

    base = RunConfig.from_toml(config_file) if config_file else RunConfig()
    config = RunConfig.from_dict({**base.to_dict(), **explicit})
    directory = Path(run_dir) if run_dir else default_run_dir(config)

    state = None
    if resume is not None:
        state = resume_state(directory, resume or None)
        saved = RunConfig.from_dict(state["config"], source="checkpoint config")
        conflicts = [k for k, v in explicit.items() if k != "device" and getattr(saved, k) != v]
        if conflicts:
            raise click.ClickException(
                f"--resume: {conflicts[0]}={explicit[conflicts[0]]!r} differs from the checkpoint's "
                f"{getattr(saved, conflicts[0])!r}; drop the flag to continue the same run")
        config = saved.replace(device=config.device)
    check_run_dir(directory, resume=state is not None)

    click.echo(f"run directory: {directory}", err=True)
    record = execute(config, directory, resume=state, progress=not quiet)
    metrics = record["metrics"]
    click.echo(f"{record['dataset']} / {record['defense']} / {record['preset']} "
               f"({'+'.join(record['modalities'])}): clean accuracy {metrics['clean']:.2f}% "
               f"on {record['data']['test_size']} test clips")
    click.echo(f"record: {directory / 'result.json'}")


# -- list ---------------------------------------------------------------------

@cli.command(name="list")
@click.argument("kind", required=False, type=click.Choice(sorted(REGISTRIES)))
def list_(kind: str | None) -> None:
    """Print what is registered: datasets, backbones, defenses, attacks.

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
        if not entries:
            click.echo("  (none)")
    if not kind:
        click.echo("presets:")
        for preset in PRESETS.values():
            click.echo(f"  {preset.name:<16} rgb {preset.rgb_frames}x{preset.rgb_size}x{preset.rgb_size}, "
                       f"skeleton {preset.skeleton_frames} frames")


# -- model-info -----------------------------------------------------------------

@cli.command(name="model-info")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--num-classes", default=60, show_default=True, type=click.IntRange(min=2))
@click.option("--joints", default=25, show_default=True, type=click.IntRange(min=1), help="Skeleton joints V.")
@click.option("--persons", default=2, show_default=True, type=click.IntRange(min=1), help="Skeleton persons M.")
@click.option("--coords", default=3, show_default=True, type=click.IntRange(min=1), help="Coordinates per joint C.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def model_info(preset: str, num_classes: int, joints: int, persons: int, coords: int, as_json: bool) -> None:
    """Show each branch's stages with output shapes and parameter counts.

    A branch's `parameters` count is its backbone without the classifier; the
    fusion head is listed on its own.

    \b
    Examples:
      mmrobust model-info --preset paper --num-classes 60
      mmrobust model-info --preset paper --num-classes 60 --json
    """
    from mmrobust.info import describe_model

    info = describe_model(preset, num_classes, skeleton_shape=(coords, None, joints, persons))
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


def main() -> None:
    cli(prog_name="mmrobust")


if __name__ == "__main__":
    sys.exit(main())
