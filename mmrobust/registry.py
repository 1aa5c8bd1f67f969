"""Named registries for datasets, backbones, defenses and attacks.

Every extension point of mmrobust is a :class:`Registry`. Built-in entries
live in a package (for example ``mmrobust.defenses``) whose modules register
themselves with a decorator; third-party packages add entries through an
entry-point group (for example ``mmrobust.defenses``). Both are imported on the
first lookup, never at ``import mmrobust`` time, so core code does not import
any contribution by name.

Example::

    from mmrobust.registry import DEFENSES

    @DEFENSES.register("my-defense")
    class MyDefense:
        ...

    DEFENSES.get("my-defense")          # -> MyDefense
    DEFENSES.get("my-defence")          # UnknownNameError: ... did you mean 'my-defense'?
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_+\-.:]*$")


class UnknownNameError(KeyError, ValueError):
    """A lookup of a name that nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """A second registration under a name that is already taken."""


class RegistryLoadError(ImportError):
    """A built-in module or third-party entry point that failed to import.

    The registry stays unloaded, so the next lookup tries again and fails the
    same way instead of silently lacking entries.
    """


def _origin(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


class Registry(Generic[T]):
    """A mapping from kebab/snake-case names to registered objects.

    Args:
        kind: what the entries are, used in messages ("defense").
        group: the entry-point group third-party packages use.
        package: the package (or packages) whose modules hold the built-in
            entries; every module in it is imported on first lookup.
    """

    def __init__(self, kind: str, group: str, package: str | tuple[str, ...] | None = None) -> None:
        self.kind = kind
        self.group = group
        self.packages = (package,) if isinstance(package, str) else tuple(package or ())
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._families: dict[str, Callable[[str], T]] = {}
        self._loaded = False
        self._loading = False

    # -- registration -----------------------------------------------------
    def register(self, name: str, obj: T | None = None, *, origin: str | None = None):
        """Register ``obj`` under ``name``; usable as a decorator.

        Raises:
            DuplicateNameError: the name is taken; the message names both origins.
            ValueError: the name is not lower-case kebab/snake case.
        """
        if not _NAME.match(name):
            raise ValueError(
                f"invalid {self.kind} name {name!r}: start with a lower-case letter or digit and use only "
                "lower-case letters, digits and - _ + . :"
            )

        def add(entry: T) -> T:
            where = origin or _origin(entry)
            if name in self._entries:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is already registered by {self._origins[name]}; "
                    f"second registration from {where}"
                )
            self._entries[name] = entry
            self._origins[name] = where
            return entry

        return add if obj is None else add(obj)

    def register_family(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Resolve every name ``<prefix><rest>`` that is not registered itself to ``resolve(rest)``.

        For entries made on demand from another library's names, such as
        ``ta:<Class>`` for any torchattacks class; ``resolve`` raises
        ValueError for a ``rest`` it cannot make.
        """
        if not prefix or not _NAME.match(prefix.lower()):
            raise ValueError(f"invalid {self.kind} family prefix {prefix!r}")
        if prefix in self._families:
            raise DuplicateNameError(f"{self.kind} family {prefix!r} is already registered")
        self._families[prefix] = resolve

    def families(self) -> list[str]:
        """The prefixes of the name families, sorted."""
        self._load()
        return sorted(self._families)

    # -- lookup -----------------------------------------------------------
    def get(self, name: str) -> T:
        """Return the entry registered as ``name``.

        Raises:
            UnknownNameError: with the closest registered names suggested.
        """
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            pass
        for prefix, resolve in self._families.items():
            if name.startswith(prefix):
                return resolve(name[len(prefix):])
        raise UnknownNameError(self._unknown_message(name))

    def __contains__(self, name: object) -> bool:
        self._load()
        if name in self._entries:
            return True
        if not isinstance(name, str) or not any(name.startswith(p) for p in self._families):
            return False
        try:
            self.get(name)
        except (ValueError, ImportError):
            return False
        return True

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())

    def origin(self, name: str) -> str:
        """Where ``name`` was registered (module and class, or entry point)."""
        self.get(name)
        if name in self._origins:
            return self._origins[name]
        prefix = next(p for p in self._families if name.startswith(p))
        return f"family {prefix}<name> ({_origin(self._families[prefix])})"

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = (
            f"; did you mean {' or '.join(repr(c) for c in close)}?"
            if close
            else f"; registered: {', '.join(sorted(self._entries)) or 'none'}"
        )
        families = "".join(f" (or {prefix}<name>)" for prefix in sorted(self._families))
        return f"unknown {self.kind} {name!r}{hint}{families}"

    # -- discovery --------------------------------------------------------
    def _load(self) -> None:
        if self._loaded or self._loading:
            return  # while loading, modules being imported may look entries up
        self._loading = True
        try:
            for name in self.packages:
                package = importlib.import_module(name)
                for info in pkgutil.iter_modules(package.__path__):
                    if not info.name.startswith("_"):
                        importlib.import_module(f"{name}.{info.name}")
            for entry_point in importlib.metadata.entry_points(group=self.group):
                self._load_entry_point(entry_point)
        except (RegistryLoadError, DuplicateNameError):
            raise
        except Exception as error:
            raise RegistryLoadError(f"could not load the {self.kind} registry: {error}") from error
        finally:
            self._loading = False
        self._loaded = True

    def _load_entry_point(self, entry_point: importlib.metadata.EntryPoint) -> None:
        try:
            loaded = entry_point.load()
        except Exception as error:
            raise RegistryLoadError(f"entry point {entry_point.name!r} = {entry_point.value} "
                                    f"(group {self.group}) failed to import: {error}") from error
        if inspect.ismodule(loaded):
            return  # a module: importing it ran its decorators
        if self._entries.get(entry_point.name) is loaded:
            return  # its module registered it with the decorator
        self.register(entry_point.name, loaded, origin=f"entry point {entry_point.value}")

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Restore the registry on exit: entries added inside are dropped.

        For tests that register fakes.
        """
        self._load()
        entries, origins, families = dict(self._entries), dict(self._origins), dict(self._families)
        try:
            yield self
        finally:
            self._entries, self._origins, self._families = entries, origins, families


DATASETS: Registry[Callable[..., Any]] = Registry("dataset", "mmrobust.datasets", "mmrobust.datasets")
BACKBONES: Registry[Callable[..., Any]] = Registry("backbone", "mmrobust.backbones", "mmrobust.backbones")
DEFENSES: Registry[Callable[..., Any]] = Registry("defense", "mmrobust.defenses", "mmrobust.defenses")
ATTACKS: Registry[Callable[..., Any]] = Registry("attack", "mmrobust.attacks", "mmrobust.attacks")
STUDIES: Registry[Callable[..., Any]] = Registry("study", "mmrobust.studies", "mmrobust.studies")

# Extra ``mmrobust`` subcommands (click commands) that contributions add: with ``@register_command`` in a
# built-in contribution's module, or through the entry-point group from another package.
COMMANDS: Registry[Any] = Registry("command", "mmrobust.commands",
                                   ("mmrobust.defenses", "mmrobust.attacks", "mmrobust.datasets"))

REGISTRIES = {"dataset": DATASETS, "backbone": BACKBONES, "defense": DEFENSES, "attack": ATTACKS,
              "study": STUDIES}

register_dataset = DATASETS.register
register_backbone = BACKBONES.register
register_defense = DEFENSES.register
register_attack = ATTACKS.register
register_study = STUDIES.register
register_command = COMMANDS.register
