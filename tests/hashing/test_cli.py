import subprocess
import sys
from pathlib import Path

from hashing.keys import BlockHasher, Namespace

ROOT = Path(__file__).resolve().parents[2]


def kvtier(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, timeout=60)


def test_keys_prints_one_hex_key_per_full_block():
    out = kvtier("keys", "--tokens", ",".join(map(str, range(40))), "--block-size", "16")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["c9e8087792c34251d1111e15ade325e2", "fa1be7e2e27ff7056373bc022b590525"]


def test_keys_match_the_library_with_salt_and_model():
    tokens = list(range(100, 132))
    out = kvtier("keys", "--tokens", ",".join(map(str, tokens)), "--block-size", "8",
                 "--salt", "tenant-a", "--model-id", "m1")
    expected = BlockHasher(Namespace(model_id="m1", salt="tenant-a"), 8).keys(tokens)
    assert out.stdout.split() == [k.hex() for k in expected]
    other = kvtier("keys", "--tokens", ",".join(map(str, tokens)), "--block-size", "8",
                   "--salt", "tenant-b", "--model-id", "m1")
    assert set(other.stdout.split()).isdisjoint(out.stdout.split())


def test_keys_secret_file(tmp_path):
    secret = tmp_path / "seed"
    secret.write_bytes(b"s3cret\n")
    out = kvtier("keys", "--tokens", "1,2,3,4", "--block-size", "4", "--hash", "sha256",
                 "--secret-file", str(secret))
    expected = BlockHasher(Namespace(), 4, "sha256", b"s3cret").keys([1, 2, 3, 4])
    assert out.stdout.split() == [expected[0].hex()]


def test_keys_bad_input_is_a_clear_error():
    out = kvtier("keys", "--tokens", "1,2,x")
    assert out.returncode == 2
    assert "comma-separated integers" in out.stderr and "Traceback" not in out.stderr
    out = kvtier("keys", "--tokens", "1,2,3", "--block-size", "0")
    assert out.returncode == 2 and "block_size" in out.stderr
    short = kvtier("keys", "--tokens", "1,2,3")
    assert short.returncode == 0 and short.stdout == "" and "no full block" in short.stderr
