"""Tests of mixnb/config.py: RunConfig's checks, resolved values, run names and identity; from_parameters."""

import ast
import dataclasses
import json

import nbformat
import pytest

from helpers import RX50  # tests/helpers.py, on sys.path
from mixnb.config import NOTEBOOK_ONLY, RunConfig, from_parameters
from mixnb.paths import NOTEBOOKS
from mixnb.sweep import expand


# ----------------------------------------------------------------------------- the notebook's parameters: one configuration path
def _parameters_cell() -> dict:
    nb = nbformat.read(NOTEBOOKS / "train.ipynb", as_version=4)
    [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body}


def test_the_notebook_declares_every_runconfig_field_with_its_default():
    declared = _parameters_cell()
    defaults = {f.name: (f.default_factory() if callable(f.default_factory) else f.default)
                for f in dataclasses.fields(RunConfig)}
    assert set(declared) == set(defaults) | set(NOTEBOOK_ONLY)  # drift in either direction fails
    assert {k: declared[k] for k in defaults} == defaults
    assert {k: declared[k] for k in NOTEBOOK_ONLY} == NOTEBOOK_ONLY


def test_unknown_notebook_parameter_fails_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\].*epochs"):
        from_parameters({**_parameters_cell(), "epoch": 1, "In": [], "json": json})
    cfg, options = from_parameters({**_parameters_cell(), "lr": 0.1, "method": "cutmix",
                                    "method_args": '{"alpha": 0.2}'})  # papermill -p passes the JSON as text
    assert cfg.lr == 0.1 and cfg.method_args == {"alpha": 0.2} and options["progress"] == "epoch"
    assert from_parameters({"method": "cutmix", "method_args": "alpha=0.3"})[0].method_args == {"alpha": 0.3}


# ----------------------------------------------------------------------------- checks and resolved values
def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown RunConfig key"):
        RunConfig.from_dict({"methd": "mixup"})
    with pytest.raises(TypeError, match="epochs"):
        RunConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ValueError, match="valid methods"):
        RunConfig(method="nope")
    with pytest.raises(ValueError, match="unknown profile"):
        RunConfig(profile="imagenet")
    with pytest.raises(ValueError, match="MIXNB_DATA"):
        RunConfig(profile="tiny-imagenet").data_root()


def test_resolved_values_are_settings_and_explicit_values_win():
    cfg = RunConfig(method="cutmix", reference="head", crop_interpolation="bilinear", method_args={"partner_tries": 3})
    assert cfg.crop == "bilinear" and cfg.full_method_args()["partner_tries"] == 3
    assert RunConfig(method="automix", backbone=RX50, running_stats="mean").maths()["running_stats"] == "mean"
    assert RunConfig.from_dict({"method": "puzzlemix", "reference": "head"}).full_method_args()["t_size"] == -1
    assert RunConfig(method="puzzlemix", method_args={"mean": [0.5] * 3, "std": [0.25] * 3}).method_args == {
        "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}  # mean/std are registry settings, typed
    for bad in ({"reference": "2022"}, {"crop_interpolation": "nearest"}, {"running_stats": "last"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RunConfig(**bad)
    with pytest.raises(ValueError, match="partner_tries"):
        RunConfig(method="cutmix", method_args={"partner_tries": 0})


# ----------------------------------------------------------------------------- run names and identity
def test_run_names_are_readable_and_distinct():
    assert RunConfig(method="cutmix").run_name() == "cutmix-resnet18-s0"
    assert RunConfig(method="cutmix", method_args={"alpha": 1}).run_name() == "cutmix-resnet18-s0"  # the default
    assert RunConfig(method="cutmix", method_args={"alpha": 0.2}).run_name() == "cutmix-resnet18-s0-a0.2"
    assert RunConfig(method="mixup", seed=1, epochs=100, lr=0.1).run_name() == "mixup-resnet18-s1-ep100-lr0.1"
    assert RunConfig(method="mixup", epochs=3).run_name() == "mixup-resnet18-s0"  # the sample profile's 3
    a, b = RunConfig(data="/data/a"), RunConfig(data="/data/b")
    assert a.run_name() == b.run_name() == RunConfig().run_name()  # the dataset is in the identity, not the name
    assert RunConfig(compile="off", log_every=3, eval_batch_size=7, device="cpu").run_name() == "vanilla-resnet18-s0"


def test_run_names_tell_apart_floats_that_print_alike_and_keep_todays_names():
    names = [RunConfig(method="mixup", method_args={"alpha": a}).run_name() for a in (0.2, 0.2000001, 0.5)]
    assert names == ["mixup-resnet18-s0-a0.2", "mixup-resnet18-s0-a0.2000001", "mixup-resnet18-s0-a0.5"]
    assert RunConfig(method="mixup", lr=0.1, epochs=100).run_name() == "mixup-resnet18-s0-ep100-lr0.1"
    assert len(expand("test", ["mixup"], alphas=[0.2, 0.2000001])) == 2  # the sweep kept only the first


def test_running_stats_names_only_a_non_default_choice():
    assert RunConfig(bn_groups=2).run_name() == "vanilla-resnet18-s0-bng2"
    assert RunConfig(bn_groups=2, running_stats="mean").run_name() == "vanilla-resnet18-s0-bng2-bnstatsmean"
    assert RunConfig(method="automix", backbone=RX50, running_stats="mean").run_name() == \
        "automix-resnext50-s0-bnstatsmean"


def test_identity_ignores_what_does_not_change_the_result():
    import torch

    cpu = torch.device("cpu")
    data = {"root": "/x", "manifest_key": "k"}
    base = RunConfig(precision="fp32").identity(cpu, data)
    for other in (dict(compile="default"), dict(log_every=3), dict(eval_batch_size=10), dict(device="cpu")):
        assert RunConfig(precision="fp32", **other).identity(cpu, data) == base
    assert RunConfig(precision="fp32", epochs=3).identity(cpu, data) == base  # resolved: the profile's 3
    assert RunConfig(precision="bf16").identity(cpu, data) != base
    assert RunConfig(precision="fp32").identity(cpu, {**data, "manifest_key": "other"}) != base
