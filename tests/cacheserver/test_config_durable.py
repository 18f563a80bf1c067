"""The durable-mode and fault-injection settings: parsed from every source, checked once."""

import pytest

from cacheserver.config import load


def test_flash_sync_from_flag_env_and_file(tmp_path):
    assert load({}, {}).flash_sync is False
    assert load({}, {"KVTIER_FLASH_SYNC": "1"}).flash_sync is True
    assert load({"flash_sync": False}, {"KVTIER_FLASH_SYNC": "yes"}).flash_sync is False
    f = tmp_path / "kvtier.toml"
    f.write_text("flash_sync = true\ninject_delay_ms = 5\n")
    c = load({}, {}, str(f))
    assert (c.flash_sync, c.inject_delay_ms) == (True, 5)


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({}, {"KVTIER_FLASH_SYNC": "maybe"}, "flash_sync from environment must be true or false"),
    ({"flash_sync": True, "flash_gb": 0.0}, {}, "flash_sync needs a flash tier"),
    ({"inject_delay_ms": -1}, {}, "inject_delay_ms"),
])
def test_bad_durable_settings_say_how_to_fix(flags, env, message):
    with pytest.raises(ValueError, match=message):
        load(flags, env)
