"""NPU target profiles: built-in YAML files in this folder plus the user's `target_profiles` from
config.yaml. A profile may name a `base:` profile and list only what differs; each is checked,
resolved, against the profile schema (`schema.py`)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import yaml

from npuflow.util.errors import ConfigError
from npuflow.util.merge import merge_blocks
from npuflow.util.registry import Registry

PROFILE_DIR = Path(__file__).resolve().parent
# Fitted parameters live apart from the authored profiles: `npuflow sim-fit` writes
# fits/<target>.yaml and never rewrites a hand-written file.
FIT_DIR = PROFILE_DIR / "fits"
# libyaml's parser where PyYAML has it: the same documents, several times faster to read.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _parsed_profiles(files: tuple[tuple[str, int, int], ...]) -> dict[str, tuple[dict, str]]:
    return {Path(f).stem: (yaml.load(Path(f).read_text(), Loader=YAML_LOADER), f"built-in profile {Path(f).name}") for f, _, _ in files}


def _builtin_profiles() -> dict[str, tuple[dict, str]]:
    """The built-in profiles' YAML with their fits (fits/<target>.yaml: `fit`), parsed once per
    version of the files (the config check and the plan each load the targets, and parsing was
    most of the time that takes; `sim-fit` rewrites the fits)."""

    def stamped(folder: Path) -> tuple:
        return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.glob("*.yaml")))

    profiles = copy.deepcopy(_parsed_profiles(stamped(PROFILE_DIR)))
    for name, (fitted, _) in _parsed_profiles(stamped(FIT_DIR)).items():
        if name in profiles and isinstance(fitted, dict) and "fit" in fitted:
            profiles[name][0]["fit"] = copy.deepcopy(fitted["fit"])
    return profiles


def _raw_profiles(user_profiles: dict) -> dict[str, tuple[dict, str]]:
    raw = _builtin_profiles()
    for name, prof in user_profiles.items():
        raw[name] = (prof, f"target_profiles.{name}")
    return raw


def _resolve(name: str, raw: dict, seen: tuple = ()) -> dict:
    prof, where = raw[name]
    base = prof.get("base")
    if base is None:
        return copy.deepcopy(prof)
    if base not in raw or base in seen:
        raise ConfigError(f"{where}.base: {'unknown' if base not in raw else 'circular'} base profile {base!r}")
    inherited = _resolve(base, raw, seen + (name,))
    # a fit belongs to the target it was fitted on, not to derived ones; nor does "datasheet only"
    inherited.pop("fit", None)
    inherited.pop("datasheet_only", None)
    return merge_blocks(inherited, {k: v for k, v in prof.items() if k != "base"})


def _ancestors(name: str, raw: dict) -> list[str]:
    """The targets a profile derives from, nearest first (`base:` chain, bases `_…` left out)."""
    out, base = [], raw[name][0].get("base")
    while isinstance(base, str) and base in raw and base not in out:
        if not base.startswith("_"):
            out.append(base)
        base = raw[base][0].get("base")
    return out


def get_path(profile: dict, path: str, default=None):
    node = profile
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_path(profile: dict, path: str, value) -> None:
    node = profile
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


# Profiles (with where they come from) that passed `_check`, as canonical JSON: the config check
# and the plan each load the targets, and checking was half of what that takes.
_passed: set[str] = set()


def _check(prof: dict, where: str) -> None:
    """The profile against its schema (unknown keys, types, units without rates, ops on two units)
    and the simulator's own checks of its fit parameters; every problem in one error."""
    from npuflow.targets.fit_parameters import check_fit_parameters
    from npuflow.targets.schema import profile_problems

    try:
        key = json.dumps([prof, where], sort_keys=True, default=repr)
    except TypeError:  # keys of mixed types cannot be sorted: check it, and let the schema say what is wrong
        key = None
    if key is not None and key in _passed:
        return

    problems = profile_problems(prof, where)
    if not problems:  # the fit's checks read values the schema has checked
        problems = check_fit_parameters(prof, where)
    if problems:
        raise ConfigError("\n  ".join(problems))
    if key is not None:
        _passed.add(key)


def load_targets(user_profiles: dict | None = None, apply_fit: bool = True) -> Registry[dict]:
    """All target profiles, resolved and checked, by name (names starting with _ are bases).
    A profile's `fit.parameters` (from `npuflow sim-fit`) replace the values at their paths; a
    profile without a fit that names `transfer_from: <target>`, or whose `base:` is a fitted
    target, takes that target's fitted values for the parameters it declares (recorded under
    `transferred`)."""
    from npuflow.targets.fit_parameters import transferred

    raw = _raw_profiles(user_profiles or {})
    resolved = {name: _resolve(name, raw) for name in raw if not name.startswith("_")}
    targets: Registry[dict] = Registry("target")
    for name, prof in resolved.items():
        own, own_base = raw[name][0], raw[name][0].get("base")
        derived = not prof.get("fit") and own_base in resolved and get_path(resolved[own_base], "fit.parameters")
        if derived:
            # a profile derived from a fitted target (`base: rdk-x5` with a change) keeps that
            # fit's parameters on its own figures (a variant is comparable with its base), but
            # a value it sets itself stays its own
            prof["transfer_from"] = own_base
        source = prof.get("transfer_from")
        if source is not None and source not in resolved:
            raise ConfigError(f"{raw[name][1]}.transfer_from: unknown target {source!r}")
        if apply_fit:
            values = dict(get_path(prof, "fit.parameters", {}))
            if source is not None and get_path(resolved[source], "fit.parameters"):
                moved = transferred(prof, resolved[source]["fit"]["parameters"])
                if derived:
                    moved = {path: v for path, v in moved.items() if get_path(own, path) is None}
                prof["transferred"] = {"from": source, "parameters": moved}
                values = {**moved, **values}  # its own fit, if any, on top
            for path, value in values.items():
                set_path(prof, path, value)
        _check(prof, raw[name][1])
        prof["name"] = name
        prof["derived_from"] = _ancestors(name, raw)
        targets.add(name, prof)
    for name in targets.names():
        prof = targets.get(name)
        if prof["derived_from"] and not prof.get("fit"):  # a fitted profile stands on its own measurements
            base = prof["derived_from"][0]
            prof["differs_from_base"] = {"base": base, "changes": profile_changes(targets.get(base), prof)}
    return targets


# What a profile carries about itself rather than the chip it models (its `chip` name the heading
# shows beside the changes): not a difference from its base.
_BOOKKEEPING = ("name", "chip", "derived_from", "differs_from_base", "transferred", "transfer_from", "fit", "sources", "notes", "base")


def profile_changes(base: dict, own: dict) -> dict[str, dict]:
    """Every leaf value (dotted path) a derived profile has otherwise than its base, as used:
    {path: {"base": value or None, "own": value or None}}."""

    def leaves(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if not prefix and k in _BOOKKEEPING:
                    continue
                yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix[:-1], node

    theirs, ours = dict(leaves(base)), dict(leaves(own))
    return {p: {"base": theirs.get(p), "own": ours.get(p)} for p in sorted(set(theirs) | set(ours)) if theirs.get(p) != ours.get(p)}


def changes_text(differs: dict | None, limit: int = 4) -> str:
    """`derived from rdk-x5: units.tensor.peak_ops_per_s.int8 1e+13 → 1.5e+13, …` (or '' for a
    profile that derives from none), as the report and MLflow show it."""
    if not differs:
        return ""
    changes = differs["changes"]
    if not changes:
        return f"derived from {differs['base']}: nothing changed"
    shown = [f"{path} {_short(c['base'])} → {_short(c['own'])}" for path, c in list(changes.items())[:limit]]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return f"derived from {differs['base']}: " + ", ".join(shown) + more


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "unset" if value is None else str(value)
