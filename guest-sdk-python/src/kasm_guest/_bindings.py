"""The bindings componentize-py generates for the handler's world, found by name.

``kasm-py build`` generates a world that imports only the capabilities the handler declares,
and componentize-py generates the module :data:`WORLD_MODULE` for it. A capability left out
of the world has no module; outside a component there is no world module at all. The
wrappers look their module up once, when they are imported: at build time, before the
snapshot componentize-py takes, because a component cannot import anything after it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import CapabilityError

#: The module componentize-py generates the bindings into (``--world-module``).
WORLD_MODULE = "kasm_world"


def _find(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            return None
        raise


#: Whether this code runs inside a component built by ``kasm-py build``.
IN_COMPONENT = _find(WORLD_MODULE) is not None


def interface(name: str) -> ModuleType | None:
    """The bindings of the world's import ``name``, or ``None`` if the world lacks it."""
    if not IN_COMPONENT:
        return None
    return _find(f"{WORLD_MODULE}.imports.{name}")


def missing(capability: str) -> CapabilityError:
    """The error for a call to ``capability`` that this build cannot make."""
    if not IN_COMPONENT:
        return CapabilityError(
            f"the `{capability}` capability works only inside a kasm component "
            "(build it with kasm-py build; test the handler's logic without it)"
        )
    return CapabilityError(
        f"this component was built without the `{capability}` capability: add "
        f'"{capability}" to `capabilities` in [tool.kasm] (or pass --capability {capability}) '
        "and build again"
    )


class _NeverRaised(Exception):
    """Stands for the bindings' ``Err`` outside a component, where no import can raise it."""


def result_error() -> type[Exception]:
    """The exception class the bindings raise for the error case of a WIT ``result``."""
    if not IN_COMPONENT:
        return _NeverRaised
    module = _find("componentize_py_types")
    return module.Err if module is not None else _NeverRaised
