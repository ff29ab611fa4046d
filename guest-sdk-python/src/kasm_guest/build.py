"""``kasm-py``: build a Python handler into a kasm component.

``kasm-py build SOURCE`` takes a handler module (a ``.py`` file) or a project folder (with a
``pyproject.toml`` whose ``[tool.kasm]`` table names the module and its capabilities),
generates the narrow world for the declared capabilities (see :mod:`kasm_guest.world`) and
runs componentize-py to write the ``.wasm``.

``[tool.kasm]`` keys: ``module`` (the module holding the ``@handler`` function; default
``handler``), ``capabilities`` (a list out of ``producer``, ``kv``, ``sql``, ``websocket``,
``http``; ``settings`` and ``log`` are always in), ``name`` (the component's file name
without ``.wasm``; default the project's name). Command-line flags override the table.

componentize-py runs the module at build time and snapshots the interpreter after it: the
component holds the modules imported by then and nothing else, so every import must be at
module top level.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from . import world
from ._bindings import WORLD_MODULE

#: The app module componentize-py wraps; generated into the build folder.
ENTRY_MODULE = "kasm_component_entry"

#: The componentize-py this SDK is built and tested with (the package's pinned dependency).
COMPONENTIZE_PY = "0.25.1"

#: The custom section kasm-py appends to every component it builds: JSON saying what made it,
#: so a host (or a person with wasm-tools) can tell an interpreted handler from a compiled one
#: without running it.
GUEST_SECTION = "kasm:guest"

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class BuildError(Exception):
    """The handler cannot be built; the message says why and what to change."""


@dataclass
class Project:
    """What one build needs, resolved from the source, ``[tool.kasm]`` and the flags."""

    module: str
    name: str
    capabilities: list[str]
    python_path: list[Path] = field(default_factory=list)


def resolve(
    source: Path,
    capabilities: Optional[Sequence[str]] = None,
    module: Optional[str] = None,
    name: Optional[str] = None,
    python_path: Sequence[Path] = (),
) -> Project:
    """The project for ``source`` (a ``.py`` file or a folder), flags over ``[tool.kasm]``."""
    if not source.exists():
        raise BuildError(f"{source}: no such file or folder")
    source = source.resolve()
    if source.is_file():
        if source.suffix != ".py":
            raise BuildError(f"{source}: a handler source is a .py file or a project folder")
        root, default_module, default_name = source.parent, source.stem, source.stem
    else:
        root, default_module, default_name = source, None, source.name
    table, project_name = _config(root)
    if table.get("module") is not None and not isinstance(table["module"], str):
        raise BuildError(f"{root / 'pyproject.toml'}: [tool.kasm] module must be a string")
    # A file names its module; a folder's comes from [tool.kasm], else a conventional name.
    module = module or default_module or table.get("module") or _find_module(root)
    if not _MODULE_NAME.match(module):
        raise BuildError(f"`{module}` is not a Python module name")
    declared = capabilities
    if declared is None:
        declared = table.get("capabilities", [])
        if not isinstance(declared, list) or not all(isinstance(c, str) for c in declared):
            raise BuildError(
                f"{root / 'pyproject.toml'}: [tool.kasm] capabilities must be a list of names"
            )
    try:
        caps = world.normalize(declared)
    except world.WorldError as error:
        raise BuildError(str(error)) from None
    name = name or table.get("name") or project_name or default_name
    paths = [root] + ([root / "src"] if (root / "src").is_dir() else [])
    paths += [Path(p).resolve() for p in python_path]
    return Project(module=module, name=str(name), capabilities=caps, python_path=paths)


def _config(root: Path) -> tuple[dict, Optional[str]]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}, None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise BuildError(f"{path}: {error}") from None
    table = data.get("tool", {}).get("kasm", {})
    if not isinstance(table, dict):
        raise BuildError(f"{path}: [tool.kasm] must be a table")
    unknown = sorted(set(table) - {"module", "capabilities", "name"})
    if unknown:
        raise BuildError(
            f"{path}: unknown key(s) in [tool.kasm]: {', '.join(unknown)} "
            "(known: module, capabilities, name)"
        )
    return table, data.get("project", {}).get("name")


def _find_module(root: Path) -> str:
    for candidate in ("handler", "app"):
        if (root / f"{candidate}.py").is_file() or (root / candidate / "__init__.py").is_file():
            return candidate
    raise BuildError(
        f"{root}: no handler module found (handler.py, app.py, or `module` in [tool.kasm])"
    )


def entry_source(module: str) -> str:
    """The app module componentize-py wraps: the author's module, then the export."""
    return (
        "# Generated by kasm-py build: the app module componentize-py wraps. Importing the\n"
        "# handler module here, at build time, puts it and everything it imports into the\n"
        "# snapshot the component starts from.\n"
        f"import {module}  # noqa: F401  (its @handler registers the function)\n"
        "from kasm_guest import _handler\n"
        "\n"
        "if _handler.registered() is None:\n"
        "    raise RuntimeError(\n"
        f"        \"module {module} registers no handler: decorate its handler function \"\n"
        "        \"with @kasm_guest.handler\"\n"
        "    )\n"
        "\n"
        "from kasm_guest._entry import KasmWorld  # noqa: E402,F401  (the `handle` export)\n"
    )


def componentize_command(
    project: Project, wit: Path, build_dir: Path, output: Path
) -> list[str]:
    """The componentize-py command line for ``project``, its world written under ``build_dir``."""
    package = world.write(wit, project.capabilities, build_dir)
    (build_dir / f"{ENTRY_MODULE}.py").write_text(entry_source(project.module), encoding="utf-8")
    sdk_parent = Path(__file__).resolve().parent.parent
    command = [_componentize_py(), "--wit-path", str(package), "--world", world.WORLD]
    command += ["--world-module", WORLD_MODULE]
    for name in world.interface_names(project.capabilities):
        command += ["--import-interface-name", name]
    command += ["componentize", ENTRY_MODULE, "--output", str(output)]
    for path in [build_dir, *project.python_path, sdk_parent]:
        command += ["--python-path", str(path)]
    return command


def _componentize_py() -> str:
    # The one installed beside this package (same virtualenv), else the one on PATH.
    beside = Path(sys.executable).parent / "componentize-py"
    if beside.exists():
        return str(beside)
    found = shutil.which("componentize-py")
    if found is None:
        raise BuildError(f"componentize-py is not installed (pip install componentize-py=={COMPONENTIZE_PY})")
    return found


def build(project: Project, output: Path, wit: Optional[Path] = None, quiet: bool = False) -> float:
    """Build ``project`` into ``output``; returns the seconds componentize-py took."""
    wit = wit or world.shipped_wit() / "kasm"
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="kasm-py-") as tmp:
        try:
            command = componentize_command(project, wit, Path(tmp), partial)
        except world.WorldError as error:
            raise BuildError(str(error)) from None
        started = time.monotonic()
        # A clean environment for the tool: VIRTUAL_ENV would add that venv's
        # site-packages to the component's path behind our back.
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        if quiet:
            command.insert(1, "--quiet")
        result = subprocess.run(command, env=env)
        took = time.monotonic() - started
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"componentize-py failed (exit {result.returncode}); its output is above")
    with partial.open("ab") as component:
        component.write(guest_section(project))
    partial.replace(output)
    return took


def guest_section(project: Project) -> bytes:
    """The :data:`GUEST_SECTION` custom section for ``project``, encoded.

    A custom section may appear between any two sections of a component, so appending one
    leaves the component valid and its behaviour unchanged.
    """
    from . import __version__

    payload = json.dumps(
        {
            "language": "python",
            "sdk": f"kasm-guest {__version__}",
            "toolchain": f"componentize-py {COMPONENTIZE_PY}",
            "capabilities": project.capabilities,
        },
        separators=(",", ":"),
    ).encode()
    name = GUEST_SECTION.encode()
    body = _leb128(len(name)) + name + payload
    return b"\x00" + _leb128(len(body)) + body


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``kasm-py`` command."""
    parser = argparse.ArgumentParser(
        prog="kasm-py", description="Build Python kasm handlers into components."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("build", "build a handler into a .wasm component"),
        ("world", "print the narrow world a handler is built against"),
    ):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("source", type=Path, nargs="?", default=Path("."),
                         help="the handler: a .py file or a project folder (default: .)")
        sub.add_argument("-c", "--capability", action="append", dest="capabilities",
                         metavar="NAME",
                         help="a capability the handler uses (repeatable; replaces [tool.kasm] "
                              f"capabilities): {', '.join(world.CAPABILITIES)}")
        sub.add_argument("-m", "--module", help="the module holding the @handler function")
        sub.add_argument("--wit", type=Path,
                         help="folder of the kasm:handler WIT package (default: the copy "
                              "shipped with kasm-guest)")
        if command == "build":
            sub.add_argument("-o", "--output", type=Path,
                             help="the component to write (default: ./<name>.wasm)")
            sub.add_argument("-n", "--name", help="the component's name (default: the project's)")
            sub.add_argument("-p", "--python-path", action="append", type=Path, default=[],
                             metavar="DIR",
                             help="another folder of modules the handler imports (repeatable), "
                                  "e.g. one filled with pip install --target")
            sub.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    try:
        project = resolve(
            args.source,
            capabilities=args.capabilities,
            module=args.module,
            name=getattr(args, "name", None),
            python_path=getattr(args, "python_path", ()),
        )
        wit = args.wit.resolve() if args.wit else world.shipped_wit() / "kasm"
        if args.command == "world":
            text = (wit / "handler.wit").read_text(encoding="utf-8")
            print(world.narrow(text, project.capabilities), end="")
            return 0
        output = args.output or Path(f"{project.name}.wasm")
        took = build(project, output, wit=wit, quiet=args.quiet)
    except (BuildError, world.WorldError, OSError) as error:
        print(f"kasm-py: error: {error}", file=sys.stderr)
        return 2
    if not args.quiet:
        size = output.stat().st_size
        print(
            f"kasm-py: built {output} ({size / 1e6:.1f} MB) in {took:.1f} s; "
            f"world imports {', '.join(project.capabilities)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
