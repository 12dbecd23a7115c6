"""The node's config: what parse accepts, what it refuses and how it says so."""


import pytest

from plugins.module_utils.replimesh import config
from plugins.module_utils.replimesh.errors import ConfigError, ReplimeshError

from .support import write_node


def test_minimal_config_gets_the_defaults():
    cfg = config.parse({"node": "node1", "roots": ["/srv/a"]})
    assert cfg.node == "node1"
    assert cfg.roots == ("/srv/a",)
    assert (cfg.user, cfg.ssh_port, cfg.connect_timeout) == ("replimesh", 22, 10)
    assert cfg.unison == "/usr/bin/unison"


def test_every_setting_is_taken():
    cfg = config.parse({"node": "n", "roots": ["/a", "/b"], "user": "sync", "ssh_port": 2222,
                        "connect_timeout": 3, "session_timeout": 60, "unison": "/opt/unison"})
    assert cfg.roots == ("/a", "/b")
    assert (cfg.user, cfg.ssh_port, cfg.connect_timeout, cfg.session_timeout) == \
        ("sync", 2222, 3, 60)
    assert cfg.unison == "/opt/unison"


@pytest.mark.parametrize("data, needle", [
    ({"roots": ["/a"]}, "missing setting 'node'"),
    ({"node": "n"}, "missing setting 'roots'"),
    ({"node": "n", "roots": ["/a"], "colour": "red"}, "unknown setting(s) colour"),
    ({"node": 1, "roots": ["/a"]}, "node must be a str"),
    ({"node": "n", "roots": "/a"}, "roots must be a list"),
    ({"node": "n", "roots": ["/a"], "ssh_port": "22"}, "ssh_port must be a int"),
    ({"node": "n", "roots": ["/a"], "ssh_port": True}, "ssh_port must be a int"),
    ({"node": "n", "roots": []}, "non-empty list of absolute paths"),
    ({"node": "n", "roots": ["srv/a"]}, "non-empty list of absolute paths"),
    ({"node": "n", "roots": ["/a", 3]}, "non-empty list of absolute paths"),
    ({"node": "n", "roots": ["/a", "/a"]}, "the same path twice"),
    ({"node": "n", "roots": ["/a"], "connect_timeout": 0}, "connect_timeout must be positive"),
    ({"node": "n", "roots": ["/a"], "ssh_port": -1}, "ssh_port must be positive"),
    ({"node": "n", "roots": ["/a"], "watch_settle_s": 2}, "watch_settle_s must be at most"),
    (["node", "roots"], "expected a JSON object"),
])
def test_bad_config_is_refused_with_the_reason(data, needle):
    with pytest.raises(ConfigError) as caught:
        config.parse(data, "/etc/replimesh/config.json")
    message = str(caught.value)
    assert needle in message
    assert message.startswith("/etc/replimesh/config.json: ")


def test_config_error_is_a_replimesh_error():
    assert issubclass(ConfigError, ReplimeshError)


def test_load_reads_the_file(tmp_path):
    cfg, path = write_node(tmp_path, [])
    assert config.load(path) == cfg


def test_load_falls_back_to_the_environment(tmp_path, monkeypatch):
    cfg, path = write_node(tmp_path, [])
    monkeypatch.setenv("REPLIMESH_CONFIG", path)
    assert config.load() == cfg


def test_missing_file_says_how_to_deploy(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: deploy the node"):
        config.load(str(tmp_path / "nope.json"))


def test_invalid_json_is_a_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        config.load(str(path))


def test_a_config_of_the_release_before_still_loads():
    """Between the deploy's code copy and its new config, rounds keep running."""
    cfg = config.parse({"node": "n1", "roots": ["/a"],
                        "authorized_keys": "/var/lib/replimesh/.ssh/authorized_keys"})
    assert cfg.node == "n1"
