"""The registry: names in, objects out; duplicates and typos caught; plugins found lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from mmrobust import registry as registry_module
from mmrobust.registry import (
    ATTACKS,
    BACKBONES,
    DATASETS,
    DEFENSES,
    DuplicateNameError,
    Registry,
    UnknownNameError,
)


def _fresh(kind: str = "widget") -> Registry:
    # A group nobody installs entry points for: only what the test registers.
    return Registry(kind, f"mmrobust-tests.{uuid.uuid4().hex}")


def _origin(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


# -- registration and lookup ----------------------------------------------------

def test_decorator_registers_and_returns_the_object_unchanged():
    widgets = _fresh()

    @widgets.register("spinner")
    class Spinner:
        pass

    assert isinstance(Spinner, type) and Spinner.__name__ == "Spinner"
    assert widgets.get("spinner") is Spinner
    assert "spinner" in widgets
    assert widgets.names() == ["spinner"]
    assert widgets.items() == [("spinner", Spinner)]
    assert widgets.origin("spinner") == _origin(Spinner)


def test_register_without_decorator():
    widgets = _fresh()

    def make():
        return 1

    assert widgets.register("maker", make) is make
    assert widgets.get("maker") is make


def test_names_are_sorted():
    widgets = _fresh()
    for name in ("zeta", "alpha", "mid-1"):
        widgets.register(name, object())
    assert widgets.names() == ["alpha", "mid-1", "zeta"]


def test_duplicate_name_raises_naming_both_origins():
    widgets = _fresh()

    @widgets.register("spinner")
    class First:
        pass

    class Second:
        pass

    with pytest.raises(DuplicateNameError) as error:
        widgets.register("spinner")(Second)
    message = str(error.value)
    assert "spinner" in message
    assert _origin(First) in message and _origin(Second) in message
    assert isinstance(error.value, ValueError)
    assert widgets.get("spinner") is First  # not overwritten


def test_unknown_name_suggests_the_closest_names():
    widgets = _fresh("defense")
    for name in ("none", "adv-training", "amr"):
        widgets.register(name, object())

    with pytest.raises(UnknownNameError) as error:
        widgets.get("nonne")
    assert isinstance(error.value, ValueError) and isinstance(error.value, KeyError)
    message = str(error.value)
    assert message.startswith("unknown defense 'nonne'")  # no KeyError quoting around the message
    assert "did you mean 'none'" in message
    assert "adv-training" not in message


def test_unknown_name_without_close_match_lists_the_registered_names():
    widgets = _fresh()
    widgets.register("alpha", object())
    widgets.register("beta", object())
    with pytest.raises(UnknownNameError, match=r"registered: alpha, beta"):
        widgets.get("zzzzzz")


def test_unknown_name_is_caught_as_keyerror_and_valueerror():
    widgets = _fresh()
    with pytest.raises(KeyError):
        widgets.get("missing")
    with pytest.raises(ValueError):
        widgets.get("missing")
    with pytest.raises(UnknownNameError):
        widgets.origin("missing")
    assert "missing" not in widgets


@pytest.mark.parametrize("name", ["", "Upper", "with space", "-leading", "_leading", "a/b", "ümlaut", "name!"])
def test_invalid_names_are_rejected(name):
    widgets = _fresh()
    with pytest.raises(ValueError, match="invalid widget name"):
        widgets.register(name, object())
    assert widgets.names() == []


@pytest.mark.parametrize("name", ["a", "pgd", "adv-training", "snake_case", "amr+exfmem", "v1.2", "ta:pgd", "0x"])
def test_valid_names_are_accepted(name):
    widgets = _fresh()
    widgets.register(name, object())
    assert widgets.names() == [name]


def test_scoped_drops_entries_added_inside():
    widgets = _fresh()
    widgets.register("kept", object())
    with widgets.scoped() as scoped:
        assert scoped is widgets
        widgets.register("fake", object())
        assert "fake" in widgets
    assert widgets.names() == ["kept"]


def test_scoped_on_the_global_registry_drops_fakes():
    before = DEFENSES.names()
    with DEFENSES.scoped():
        @DEFENSES.register("fake-defense-for-scoped-test")
        class Fake:
            pass

        assert DEFENSES.get("fake-defense-for-scoped-test") is Fake
    assert DEFENSES.names() == before
    assert "fake-defense-for-scoped-test" not in DEFENSES


# -- built-ins, loaded lazily ---------------------------------------------------

def test_builtins_appear_on_first_lookup():
    assert "none" in DEFENSES.names()
    assert {"fgsm", "pgd", "cw-inf"} <= set(ATTACKS.names())
    assert {"i3d", "hcn"} <= set(BACKBONES.names())
    assert "synthetic" in DATASETS.names()
    assert DEFENSES.origin("none") == "mmrobust.defenses.none.NoDefense"
    assert registry_module.register_defense.__self__ is DEFENSES


def test_importing_mmrobust_does_not_import_contributions():
    code = textwrap.dedent("""
        import sys
        import mmrobust, mmrobust.registry, mmrobust.config
        loaded = sorted(m for m in sys.modules if m.startswith(("mmrobust.defenses", "mmrobust.attacks")))
        assert loaded == [], loaded
        from mmrobust.registry import DEFENSES
        assert "none" in DEFENSES.names()
        assert "mmrobust.defenses.none" in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)


# -- entry points from an installed distribution ----------------------------------

def _install_fake_distribution(root, package: str, entry_points: str, source: str) -> None:
    """A package plus its ``.dist-info`` under ``root``, as pip would leave them in site-packages."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """tmp_path on sys.path; plugin modules imported from it are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fake_mmrobust_"):
            del sys.modules[name]


def test_entry_point_plugin_is_found_lazily_on_first_lookup(plugin_path):
    _install_fake_distribution(
        plugin_path, "fake_mmrobust_plugin",
        """
        [mmrobust.defenses]
        fake-defense = fake_mmrobust_plugin:FakeDefense
        """,
        """
        class FakeDefense:
            '''A third-party defense.'''
        """,
    )
    defenses = Registry("defense", "mmrobust.defenses")
    assert "fake_mmrobust_plugin" not in sys.modules  # creating the registry imports nothing

    found = defenses.get("fake-defense")

    assert "fake_mmrobust_plugin" in sys.modules
    assert found is sys.modules["fake_mmrobust_plugin"].FakeDefense
    origin = defenses.origin("fake-defense")
    assert "entry point" in origin and "fake_mmrobust_plugin:FakeDefense" in origin
    assert defenses.names().count("fake-defense") == 1


def test_entry_point_in_another_group_is_not_loaded(plugin_path):
    _install_fake_distribution(
        plugin_path, "fake_mmrobust_attack",
        """
        [mmrobust.attacks]
        fake-attack = fake_mmrobust_attack:FakeAttack
        """,
        "class FakeAttack:\n    pass\n",
    )
    defenses = Registry("defense", "mmrobust.defenses")
    assert "fake-attack" not in defenses.names()
    assert "fake_mmrobust_attack" not in sys.modules


@pytest.mark.parametrize("target", ["fake_mmrobust_selfreg:SelfDefense", "fake_mmrobust_selfreg"])
def test_entry_point_whose_module_registers_itself_is_registered_once(plugin_path, monkeypatch, target):
    # The plugin uses the public decorator; point it at a fresh registry.
    defenses = Registry("defense", "mmrobust.defenses")
    monkeypatch.setattr(registry_module, "DEFENSES", defenses)
    monkeypatch.setattr(registry_module, "register_defense", defenses.register)
    _install_fake_distribution(
        plugin_path, "fake_mmrobust_selfreg",
        f"""
        [mmrobust.defenses]
        self-defense = {target}
        """,
        """
        from mmrobust.registry import register_defense

        @register_defense("self-defense")
        class SelfDefense:
            pass
        """,
    )

    found = defenses.get("self-defense")  # a second registration would raise DuplicateNameError

    assert found is sys.modules["fake_mmrobust_selfreg"].SelfDefense
    assert defenses.names().count("self-defense") == 1
    assert defenses.origin("self-defense") == "fake_mmrobust_selfreg.SelfDefense"


def test_entry_point_clashing_with_an_existing_name_raises(plugin_path):
    _install_fake_distribution(
        plugin_path, "fake_mmrobust_clash",
        """
        [mmrobust.defenses]
        taken = fake_mmrobust_clash:Impostor
        """,
        "class Impostor:\n    pass\n",
    )
    defenses = Registry("defense", "mmrobust.defenses")

    class Builtin:
        pass

    defenses.register("taken", Builtin)  # stands in for a built-in of the same name
    with pytest.raises(DuplicateNameError) as error:
        defenses.get("taken")
    assert _origin(Builtin) in str(error.value) and "fake_mmrobust_clash:Impostor" in str(error.value)


def test_a_broken_plugin_never_leaves_a_silently_half_loaded_registry(tmp_path, monkeypatch):
    # Distributions are discovered in sys.path order: the broken one comes first.
    good, broken = tmp_path / "good", tmp_path / "broken"
    good.mkdir()
    broken.mkdir()
    _install_fake_distribution(good, "fake_mmrobust_good", "[mmrobust.defenses]\ngood-defense = "
                               "fake_mmrobust_good:Good\n", "class Good:\n    pass\n")
    _install_fake_distribution(broken, "fake_mmrobust_broken", "[mmrobust.defenses]\nbroken-defense = "
                               "fake_mmrobust_broken:Broken\n", "raise ImportError('needs a missing library')\n")
    monkeypatch.syspath_prepend(str(good))
    monkeypatch.syspath_prepend(str(broken))
    try:
        defenses = Registry("defense", "mmrobust.defenses")
        for _ in range(2):  # either every lookup reports the broken plugin, or the good one is there
            try:
                names = defenses.names()
            except ImportError:
                continue
            assert "good-defense" in names
    finally:
        for name in ("fake_mmrobust_good", "fake_mmrobust_broken"):
            sys.modules.pop(name, None)
