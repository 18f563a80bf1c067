import pytest

from cacheserver.config import ServeConfig, load


def test_defaults():
    c = load({}, {})
    assert (c.host, c.port, c.data_port, c.flash_dir) == ("127.0.0.1", 8300, 8301, "./.kvtier/flash")


def test_flags_over_env_over_file(tmp_path):
    f = tmp_path / "kvtier.toml"
    f.write_text('port = 9000\ndata_port = 9001\ndram_gb = 1.5\npolicy = "lru"\n')
    env = {"KVTIER_DATA_PORT": "9101", "KVTIER_ADMIN_TOKEN": "t", "KVTIER_PORT": "9100"}
    c = load({"port": 9200, "host": None}, env, str(f))
    assert (c.port, c.data_port, c.dram_gb, c.admin_token, c.policy) == (9200, 9101, 1.5, "t", "lru")


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({"port": 70000}, {}, "port"),
    ({}, {"KVTIER_DRAM_GB": "lots"}, "dram_gb from environment"),
    ({"dram_gb": 0.0, "flash_gb": 0.0}, {}, "every tier"),
    ({"policy": "nope"}, {}, "policy"),
    ({"max_batch": 0}, {}, "max_batch"),
])
def test_bad_settings_say_how_to_fix(flags, env, message):
    with pytest.raises(ValueError, match=message):
        load(flags, env)


def test_unknown_or_broken_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("colour = 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load({}, {}, str(f))
    f.write_text("port = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load({}, {}, str(f))


def test_config_is_frozen_and_hides_the_token():
    c = ServeConfig(admin_token="s3cret")
    with pytest.raises(AttributeError):
        c.port = 1
    assert "s3cret" not in str(c.public())
