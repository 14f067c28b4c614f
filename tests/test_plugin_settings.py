"""Each plugin is handed its own settings (its sections and the mode), not the whole configuration.

The lifecycle hooks (``bastion_configure``, ``bastion_check``, ``bastion_startup``, ``bastion_deploy_checks``,
``bastion_storage_driver``) are called once per implementation, each with the :class:`kernel.PluginSettings` of the
plugin it belongs to: what one plugin claimed is not readable by another, and a second claim of a section names both
plugins. Older plugins that take ``config`` still get the whole :class:`kernel.Config`.
"""

from __future__ import annotations

import types

import pytest

from kernel import Config, ConfigError, Int, PluginSettings, Runtime, Str, hookimpl
from kernel.core.plugins import SEAT, call_per_plugin, describe, get_plugin_manager
from kernel.testing import FakeClock

GREETER_SCHEMA = {"greeting": Str("hello"), "times": Int(1, min=1)}


def plugin(module_name: str, **hooks) -> types.ModuleType:
    """A plugin module named ``module_name`` (its top-level package is whose settings its hooks are given)."""
    module = types.ModuleType(module_name)
    for name, function in hooks.items():
        function.__module__ = module_name
        setattr(module, name, hookimpl(function))
    return module


def manager(*plugins: types.ModuleType):
    pm = get_plugin_manager(load_entry_points=False)
    for module in plugins:
        pm.register(module, name=module.__name__)
    return pm


def test_each_plugin_gets_its_own_settings_and_the_mode():
    seen: dict[str, PluginSettings] = {}

    def configure_greeter(settings, runtime):
        settings.section("greeter", GREETER_SCHEMA)
        seen["greeter"] = settings

    def configure_other(settings):
        seen["other"] = settings

    def check_greeter(settings):
        seen["greeter at check"] = settings

    greeter = plugin("greeter_plugin.hooks", bastion_configure=configure_greeter, bastion_check=check_greeter)
    other = plugin("other_plugin", bastion_configure=configure_other)
    config = Config.from_dict({"bastion": {"development": True}, "greeter": {"greeting": "hi", "times": 3}})
    with Runtime(config, manager(greeter, other), FakeClock()):
        pass
    mine, theirs = seen["greeter"], seen["other"]
    assert mine.owner == "greeter_plugin" and theirs.owner == "other_plugin"
    assert seen["greeter at check"] is mine
    assert dict(mine["greeter"]) == {"greeting": "hi", "times": 3} and list(mine) == ["greeter"]
    assert mine.mode == "development" and mine.development is True
    with pytest.raises(KeyError, match=r"\[greeter\] is not a section of other_plugin"):
        theirs["greeter"]
    with pytest.raises(KeyError):
        mine["bastion"]  # the kernel's: the mode is what a plugin learns of it
    assert list(theirs) == []


def test_a_second_claim_of_a_section_names_both_plugins():
    first = plugin("first_plugin", bastion_configure=lambda settings: settings.section("shared", GREETER_SCHEMA))
    second = plugin("second_plugin", bastion_configure=lambda settings: settings.section("shared", {"x": Int(0)}))
    with pytest.raises(ConfigError, match=r"\[shared\]: claimed by (first|second)_plugin and again by "
                                          r"(first|second)_plugin; a section belongs to one plugin"):
        Runtime(Config.from_dict({}), manager(first, second), FakeClock())


def test_a_plugin_lists_a_family_of_sections_by_prefix_and_claims_each():
    """``sections_with_prefix`` lists, in the file's order, and claims nothing: what the lister leaves unclaimed is
    still an unknown section, and a member another plugin claimed still names both."""
    text = ("[greeter]\ngreeting = hi\n[greeter:b.example]\ntimes = 2\n[other]\nx = 1\n"
            "[greeter:a.example]\ntimes = 3\n[greeterx]\nx = 1\n")
    config = Config.from_string(text, "family.ini")
    settings = config.for_plugin("greeter_plugin")
    assert settings.sections_with_prefix("greeter:") == ("greeter:b.example", "greeter:a.example")
    assert settings.sections_with_prefix("nothing:") == ()
    assert config.owner("greeter:b.example") is None  # listing is not claiming
    with pytest.raises(ValueError):
        settings.sections_with_prefix("")
    for name in settings.sections_with_prefix("greeter:"):
        settings.section(name, GREETER_SCHEMA)
    assert dict(settings["greeter:a.example"]) == {"greeting": "hello", "times": 3}
    with pytest.raises(ConfigError, match=r"\[greeter:a.example\]: claimed by greeter_plugin and again by other"):
        config.for_plugin("other").section("greeter:a.example", {"times": Int(0)})
    settings.section("greeter", GREETER_SCHEMA)
    config.for_plugin("other").raw_section("other")
    with pytest.raises(ConfigError, match=r"family.ini: \[greeterx\]: unknown section"):
        config.check_unclaimed()


def test_a_plugin_written_for_config_still_gets_the_whole_configuration():
    seen = {}

    def configure(config, runtime):
        seen["greeting"] = config.section("greeter", GREETER_SCHEMA).greeting
        seen["storage"] = config.bastion.storage

    with Runtime(Config.from_dict({"greeter": {"greeting": "hey"}}), manager(plugin("legacy", bastion_configure=configure)),
                 FakeClock()):
        pass
    assert seen == {"greeting": "hey", "storage": "mem://"}


def test_deploy_checks_are_given_the_storage_urls_not_the_kernels_section():
    config = Config.from_dict({"bastion": {"storage": "sqlite:///x.db", "state": "redis://127.0.0.1:6379/0"}})
    assert config.for_plugin("anyone").storage_urls == {"storage": "sqlite:///x.db", "state": "redis://127.0.0.1:6379/0"}
    assert Config.from_dict({}).for_plugin("anyone").storage_urls == {"storage": "mem://"}
    assert config.for_plugin("anyone") is config.for_plugin("anyone")


def test_per_plugin_calls_keep_pluggys_order_and_first_result():
    calls = []

    def answer(name):
        def bastion_storage_driver(url, settings):
            calls.append((name, settings.owner))
            return None if name == "late" else name
        return bastion_storage_driver

    early = plugin("early", bastion_storage_driver=answer("early"))
    late = plugin("late", bastion_storage_driver=answer("late"))
    pm = manager(early, late)  # registered last: called first, as pluggy does
    found = call_per_plugin(pm, "bastion_storage_driver", Config.from_dict({}).for_plugin, url="x://", config=None,
                            clock=FakeClock())
    assert found == ["early"] and calls == [("late", "late"), ("early", "early")]


def test_one_runtime_per_plugin_manager_without_marking_pluggys_object():
    pm = manager()
    runtime = Runtime(Config.from_dict({}), pm, FakeClock())
    assert pm.get_plugin(SEAT) is not None and SEAT not in [row["name"] for row in describe(pm)]
    with pytest.raises(RuntimeError, match="already serves another runtime"):
        Runtime(Config.from_dict({}), pm, FakeClock())
    runtime.close()
    assert pm.get_plugin(SEAT) is None
    Runtime(Config.from_dict({}), pm, FakeClock()).close()  # free again
    assert not [name for name in vars(pm) if "bastion" in name]
