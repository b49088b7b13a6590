"""The command line's overrides checked before Hydra runs, so that a mistyped key, an unknown option or an
override that does not parse is one line naming it (Hydra itself prints several lines and a hint)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

CONF = Path(__file__).resolve().parent / "conf"


def override_error(overrides: list[str], config_name: str = "config") -> str | None:
    """What is wrong with ``overrides`` against the Hydra config, in one line, or None if they compose."""
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as err:
        group = (err.missing_cfg_file or "").rpartition("/")[0]
        if err.options and group:
            value = err.missing_cfg_file.rpartition("/")[2]  # type: ignore[union-attr]
            return f"{group}={value!r} is unknown: choose one of {', '.join(sorted(err.options))}"
        return first_line(err)
    except OverrideParseException as err:
        return f"cannot read the override: {first_line(err)}; write key=value"
    except HydraException as err:
        key = str(err).partition("'")[2].partition("'")[0]
        if key and isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)):
            return f"{key} is not a config key{known_keys(key, config_name)}"
        return first_line(err)
    return unknown_option(cfg.hydra.runtime.choices)


def unknown_option(choices: DictConfig) -> str | None:
    """An option Hydra let through: an optional group (``experiment``) with no such file is silently
    skipped, and the run would go on with the defaults."""
    for group, choice in choices.items():
        if str(group).startswith("hydra") or choice is None or (CONF / str(group) / f"{choice}.yaml").exists():
            continue
        options = sorted(path.stem for path in (CONF / str(group)).glob("*.yaml"))
        return f"{group}={choice!r} is unknown: choose one of {', '.join(options)}"
    return None


def known_keys(key: str, config_name: str) -> str:
    """The " (known keys under <parent>: ...)" suffix for a key that does not exist, from the config
    without overrides."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config_name)
    parent, _, _ = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    return f" (known keys{f' under {parent}' if parent else ''}: {', '.join(str(k) for k in node)})"


def first_line(err: Exception) -> str:
    return " ".join(str(err).split("\n")[:2]).strip()


def check_overrides(argv: list[str], config_name: str = "config") -> None:
    """Exit with status 1 and one line on stderr if the command line's overrides do not compose."""
    if "-m" in argv or "--multirun" in argv:  # sweeps are Hydra's to expand
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    error = override_error(overrides, config_name)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
