"""The sweep's grid: a ``Job`` per RunConfig, (backbone x seed x method) times any setting's values.

Values come from the command line or a grid file: ``ALPHAS=0.2,1,2`` (every method that has an alpha),
``SET="lr=0.1,0.2 weight_decay=5e-4"`` (any RunConfig field but the loop's own, which have METHODS, BACKBONES,
PROFILE and SEEDS; commas outside brackets separate values), ``ARGS="cutmix:alpha=0.5"`` (a method's setting;
without ``method:`` every method that has it), ``GRID=grids/alpha-search.toml`` (per-method value lists, as
OpenMixup's ``auto_train_mixups.py``). A setting no method has, or an empty list, fails. Later sources win: the
grid file, then ALPHAS, then SET/ARGS.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixnb.config import RunConfig, parse_value, split_top
from mixnb.mixups import REGISTRY, get_spec
from mixnb.paths import runs_root
from mixnb.profiles import get_profile
from mixnb.runs import is_finished, missing_products

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
METHOD_SETTINGS = sorted({key for spec in REGISTRY.values() for key in spec.defaults})  # what [all] and --arg may set
LOOP_OPTIONS = {"method": "methods", "backbone": "backbones", "profile": "profile", "seed": "seeds"}  # the loop's axes


@dataclass(frozen=True)
class Job:
    config: RunConfig
    world_size: int = 1  # processes (GPUs) for this run; > 1 trains through torchrun (DDP)
    runs: Path = field(default_factory=runs_root)  # the runs/ folder, fixed when the job is made
    analysis: bool = True  # the notebook analyses the finished run (analysis.json) on the run's device

    @property
    def run_dir(self) -> Path:
        return self.runs / self.config.profile / self.config.run_name()

    @property
    def finished(self) -> bool:
        return is_finished(self.run_dir)

    @property
    def owed(self) -> list[str]:
        """The files this run still owes that can be made (``mixnb.runs.missing_products``)."""
        return [name for name, why in missing_products(self.run_dir, analysis=self.analysis).items() if why is None]

    def parameters(self) -> dict[str, Any]:
        """The train notebook's parameters: every RunConfig field, so the run is exactly this config."""
        params = {**self.config.to_dict(), "run_dir": str(self.run_dir), "progress": "epoch",
                  "analysis": self.analysis}
        if self.world_size > 1:
            params["world_size"] = self.world_size
        return params

    def needs(self, other: Job) -> bool:
        """Whether this job waits for ``other`` (its default teacher run)."""
        c, o = self.config, other.config
        return get_spec(c.method).needs == o.method and (o.backbone, o.seed) == (c.backbone, c.seed)


Axes = dict[str, list[Any]]  # setting -> its values; a RunConfig field, or a method setting


def expand(profile: str, methods: list[str] | None = None, backbones: list[str] | None = None,
           seeds: list[int] | None = None, epochs: int | None = None, *, sets: Axes | None = None,
           args: dict[str | None, Axes] | None = None, alphas: list[float] | None = None,
           grid: dict[str, Axes] | None = None, gpus_per_run: int = 1, analysis: bool = True) -> list[Job]:
    """The grid in registry order (Vanilla first), backbones outermost; configs are validated here.

    ``sets``: RunConfig field -> values, for every run. ``args``: method (None = every method that has
    the setting) -> setting -> values. ``alphas``: alpha values for every method with an alpha. ``grid``:
    a grid file's tables (``read_grid``): "all" and method names -> setting or field -> values.
    Precedence: grid file < alphas < sets/args. Identical configs are one job. ``analysis``: each run's
    notebook ends with its analysis beyond accuracy (False: ``make analyze`` does it later).
    """
    at_least_one("GPUS_PER_RUN", gpus_per_run)
    if methods == ["all"]:
        methods = list(REGISTRY)
    for name in methods or []:
        get_spec(name)  # an unknown method fails here with the valid names
    methods = methods or [m for m, spec in REGISTRY.items() if spec.sweep]
    backbones = backbones or list(get_profile(profile).backbones)  # the profile's (mixnb.profiles)
    jobs: dict[str, Job] = {}
    for b, s, m in itertools.product(backbones, seeds or [0], methods):
        for overrides in _method_grid(m, sets or {}, args or {}, alphas, grid or {}, epochs):
            fields = {k: v for k, v in overrides.items() if k in CONFIG_FIELDS}
            method_args = {k: v for k, v in overrides.items() if k not in CONFIG_FIELDS}
            try:
                cfg = RunConfig.from_dict({"profile": profile, **fields, "method": m, "backbone": b, "seed": s,
                                           "method_args": {**fields.get("method_args", {}), **method_args}})
            except (ValueError, TypeError) as err:
                raise ValueError(f"sweep: {m} with {overrides}: {err}") from None
            job = Job(cfg, gpus_per_run, analysis=analysis)
            jobs.setdefault(str(job.run_dir), job)
    return list(jobs.values())


def _method_grid(method: str, sets: Axes, args: dict[str | None, Axes], alphas: list[float] | None,
                 grid: dict[str, Axes], epochs: int | None) -> list[dict[str, Any]]:
    """Every combination of the axes that apply to ``method`` (a method setting applies where it exists)."""
    own = get_spec(method).defaults
    axes: Axes = {}
    for source in (grid.get("all", {}), grid.get(method, {})):
        axes.update({k: v for k, v in source.items() if k in CONFIG_FIELDS or k in own})
    if alphas and "alpha" in own:
        axes["alpha"] = list(alphas)
    if epochs is not None:
        axes["epochs"] = [epochs]
    axes.update(sets)
    axes.update({k: v for k, v in args.get(None, {}).items() if k in own})
    axes.update(args.get(method, {}))
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def read_grid(path: str | Path) -> dict[str, Axes]:
    """A grid file: TOML tables ``[all]`` and ``[<method>]`` of ``setting = value or [values]``."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"grid file {path} is not text: give a TOML grid file, e.g. grids/alpha-search.toml") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"grid file {path}: {err}") from None
    grid: dict[str, Axes] = {}
    for name, table in tables.items():
        if name != "all":
            get_spec(name)
        if not isinstance(table, dict):
            raise ValueError(f"grid file {path}: {name} must be a table ([{name}]) of setting = [values]")
        settings = METHOD_SETTINGS if name == "all" else list(get_spec(name).defaults)
        for key, value in table.items():
            _refuse_loop_axis(key, f"grid file {path}: [{name}]")
            if key not in CONFIG_FIELDS and key not in settings:
                raise ValueError(f"grid file {path}: [{name}] has no setting {key!r}; its settings: "
                                 f"{', '.join(settings) or 'none'}, or a RunConfig field")
            if value == []:
                left_out = "every method" if name == "all" else name
                raise ValueError(f"grid file {path}: [{name}] {key} = [] would leave {left_out} out of the sweep; "
                                 f"give it a value or more")
        grid[name] = {k: v if isinstance(v, list) else [v] for k, v in table.items()}
    return grid


def _refuse_loop_axis(key: str, where: str) -> None:
    """Fail on a RunConfig field that the sweep's loop sets for each run, which would overwrite the value given."""
    if key in LOOP_OPTIONS:
        option = LOOP_OPTIONS[key]
        raise ValueError(f"{where}: {key} is an axis of the sweep's own loop, which would overwrite it; give it with "
                         f"--{option} (make {option.upper()}=...)")


def parse_axes(items: list[str]) -> Axes:
    """``key=v1,v2`` items -> {key: [v1, v2]} (commas inside brackets belong to one value; later keys win)."""
    axes: Axes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ValueError(f"expected key=value[,value...], got {item!r}")
        _refuse_loop_axis(key.strip(), repr(item))
        axes[key.strip()] = [parse_value(v.strip()) for v in split_top(text, ",")]
    return axes


def parse_method_axes(items: list[str]) -> dict[str | None, Axes]:
    """``[method:]key=v1,v2`` items -> {method or None: {key: [values]}}; a key that ``method`` (without one: every
    method) lacks fails with the valid names."""
    out: dict[str | None, Axes] = {}
    for item in items:
        head, sep, _ = item.partition("=")
        method, colon, key = head.rpartition(":") if ":" in head else (None, "", head)
        [(key, values)] = parse_axes([item[len(head) - len(key):] if colon else item]).items()
        settings = METHOD_SETTINGS if method is None else list(get_spec(method).defaults)
        if key not in settings:
            raise ValueError(f"--arg {item!r}: {'no method has' if method is None else method + ' has no'} setting "
                             f"{key!r}; valid: {', '.join(settings) or 'none'} (RunConfig fields go in --set)")
        out.setdefault(method, {})[key] = values
    return out


def at_least_one(option: str, value: int | None) -> None:
    """Refuse a count below 1 (None: the default), naming its make variable."""
    if value is not None and value < 1:
        raise ValueError(f"{option} must be >= 1, got {value}")
