import json

from clients.cache_client import CacheClient
from clients.cli import main
from tests.cacheserver.blocks import chain


def admin(server, capsys, *args, token="secret"):
    code = main(["admin", "--url", server.rest_url, "--token", token, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_admin_commands(module_server, capsys):
    blocks = chain("admin-cli", 2)
    with CacheClient(module_server.data_url) as c:
        c.put(blocks)
    key = blocks[1][0].hex()
    code, out, _ = admin(module_server, capsys, "stats")
    assert code == 0 and "dram" in out and "hit rate" in out
    code, out, _ = admin(module_server, capsys, "ls", "--limit", "1000")
    assert code == 0 and key in out
    code, out, _ = admin(module_server, capsys, "--json", "show", key)
    assert json.loads(out)["depth"] == 1
    assert admin(module_server, capsys, "pin", key, "--ttl", "5")[0] == 0
    assert admin(module_server, capsys, "unpin", key)[0] == 0
    assert admin(module_server, capsys, "rm", key)[0] == 0
    code, _, err = admin(module_server, capsys, "show", key)
    assert code == 1 and "404" in err
    code, _, err = admin(module_server, capsys, "flush", token="wrong")
    assert code == 1 and "403" in err
