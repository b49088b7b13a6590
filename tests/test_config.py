from dataclasses import fields
from pathlib import Path

import pytest

from flwr_privacy.config import RunConfig


def test_defaults_match_the_apps_run_config():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    top_level = {k: v for k, v in app_config.items() if not isinstance(v, dict)}
    assert top_level == RunConfig().to_run_config()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"dataset": "imagenet"}, r"dataset='imagenet' is unknown; allowed"),
        ({"fraction-fit": 0.0}, r"fraction-fit=0.0 must be in \(0, 1\]"),
        ({"fraction-fit": 1.5}, r"fraction-fit=1.5 must be in \(0, 1\]"),
        ({"min-fit-clients": 11}, r"min-fit-clients=11 samples more clients than exist \(num-clients=10\)"),
        ({"num-rounds": "ten"}, r"num-rounds='ten' must be of type int"),
        ({"lr": 0.0}, r"lr=0.0 must be > 0"),
        ({"momentum": 1.0}, r"momentum=1.0 must be in \[0, 1\)"),
        ({"model": "gpt"}, r"model='gpt' is unknown"),
        ({"num-round": 3}, r"unknown run-config keys \['num-round'\]"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(overrides, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_run_config(overrides)


def test_every_run_config_key_can_be_set_from_hydra():
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "experiments" / "conf"
    reachable = set()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for overrides in ([], ["partition=dirichlet"], ["partition=shards"], ["strategy=dgc"]):
            reachable |= set(compose(config_name="config", overrides=overrides).keys())
    runner_sets = {"output_dir"}  # the run's folder, from Hydra
    assert {f.name for f in fields(RunConfig)} - runner_sets <= reachable


@pytest.mark.parametrize(
    "experiment",
    sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "experiments/conf/experiment").glob("*.yaml")),
)
def test_each_experiment_composes_to_the_setting_its_name_says(experiment):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "experiments" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"])
    strategy, dataset, model, *split = experiment.split("_")
    assert cfg.strategy == strategy
    assert cfg.dataset.replace("-", "") == dataset
    assert cfg.model.replace("-", "") in (model, f"{strategy}{model}")
    if split:
        assert cfg.partition == split[0]


def test_every_algorithm_setting_is_declared_for_flwr_run_and_hydra():
    """flwr run accepts only the keys pyproject.toml declares; the Hydra runner sets what its strategy file has."""
    import tomllib

    import yaml

    import experiments.algorithms  # noqa: F401  (registers the built-in algorithms)
    from flwr_privacy import registry

    root = Path(__file__).resolve().parents[1]
    app_config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for name in registry.names():
        algorithm = registry.get(name)
        declared = sorted(f"{name}.{k}" for k in app_config.get(name, {}))
        assert declared == sorted(algorithm.keys), name
        hydra = yaml.safe_load((root / "experiments" / "conf" / "strategy" / f"{name}.yaml").read_text())
        assert sorted(f"{name}.{k.replace('_', '-')}" for k in hydra.get(name, {})) == sorted(algorithm.keys), name
