"""The service's settings: one frozen dataclass, checked once at start.

Sources, strongest first: command-line flags, ``KVTIER_*`` environment variables (the
field name in upper case, e.g. ``KVTIER_DRAM_GB``), a TOML file (``--config``; the same
names as the fields, at top level), the defaults below. ``load`` merges them and returns a
``ServeConfig`` or raises ``ValueError`` saying which setting is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ENV_PREFIX = "KVTIER_"
_GB = 1 << 30


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8300  # REST admin API
    data_port: int = 8301  # binary data plane (0: none)
    unix_socket: str = ""  # data plane on a Unix socket too, when set
    shared_memory: bool = True  # clients on the Unix socket may map the DRAM tier read-only
    dram_gb: float = 4.0
    hbm_gb: float = 0.0  # needs CUDA
    flash_dir: str = "./.kvtier/flash"
    flash_gb: float = 16.0  # 0: no flash tier (nothing survives a restart)
    policy: str = "default"  # tiers.registry.DEFAULT_POLICY (mq); see kvtier serve --help
    admin_token: str = ""  # mutations over REST need it when set
    page_kb: int = 64  # DRAM/HBM page size
    max_frame_mb: int = 256  # largest data-plane frame body
    max_batch: int = 4096  # most keys in one data-plane request
    max_rest_body_mb: int = 64  # largest REST request body
    flash_sync: bool = False  # durable: write-through to flash, LMDB synced on every commit
    remote: str = ""  # remote tier: redis:// or rediss:// URLs, comma-separated (Redis Cluster, Valkey)
    remote_timeout_ms: int = 500  # one remote round's connect and socket timeout
    remote_ttl_s: int = 0  # expiry of blocks written to the remote tier (0: its maxmemory policy evicts)
    remote_queue_mb: int = 256  # write-behind queue to the remote tier; blocks past it are dropped
    inject_delay_ms: int = 0  # testing only: every data-plane request waits this long first
    inject_garbage: float = 0.0  # testing only: this share of data-plane replies is a corrupted frame

    def __post_init__(self) -> None:
        for name in ("port", "data_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be a TCP port (0-65535), got {getattr(self, name)}")
        for name in ("dram_gb", "hbm_gb", "flash_gb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dram_gb == 0 and self.hbm_gb == 0 and self.flash_gb == 0:
            raise ValueError("every tier has size 0; give at least --dram-gb or --flash-gb a size")
        if self.flash_gb and not self.flash_dir:
            raise ValueError("flash_gb is set but flash_dir is empty; set --flash-dir")
        for name in ("page_kb", "max_frame_mb", "max_batch", "max_rest_body_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.flash_sync and not self.flash_gb:
            raise ValueError("flash_sync needs a flash tier; give --flash-gb a size")
        if not 0 <= self.inject_delay_ms <= 60_000:
            raise ValueError(f"inject_delay_ms must be 0-60000, got {self.inject_delay_ms}")
        if not 0 <= self.inject_garbage <= 1:
            raise ValueError(f"inject_garbage is a share of replies, 0-1, got {self.inject_garbage}")
        if self.remote:
            self.remote_settings()  # ValueError saying which URL is malformed
        from tiers.registry import make_policy

        make_policy(self.policy)  # ValueError naming the known policies

    def remote_settings(self):
        """The remote tier's settings (``tiers.remote.RemoteSettings``); only when ``remote``."""
        from tiers.remote import RemoteSettings

        urls = tuple(u.strip() for u in self.remote.split(",") if u.strip())
        return RemoteSettings(urls, timeout_s=self.remote_timeout_ms / 1000, ttl_s=self.remote_ttl_s,
                              queue_bytes=self.remote_queue_mb << 20)

    @property
    def max_frame_bytes(self) -> int:
        return self.max_frame_mb << 20

    def bytes_of(self, gb: float) -> int:
        return int(gb * _GB)

    def public(self) -> dict:
        """The settings as a dict, without the admin token."""
        out = dataclasses.asdict(self)
        out["admin_token"] = "<set>" if self.admin_token else ""
        if self.remote:
            from tiers.remote import redact

            out["remote"] = ",".join(redact(self.remote_settings().urls))
        return out


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
          "off": False}


def _coerce(name: str, kind: type, value: object, source: str):
    if kind is bool:
        return _coerce_bool(name, value, source)
    if isinstance(value, str) and kind is not str:
        value = value.strip()
    try:
        if kind is bool or isinstance(value, bool):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} from {source} must be {kind.__name__}, got {value!r}") from None


def _coerce_bool(name: str, value: object, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise ValueError(f"{name} from {source} must be true or false (1/0, yes/no), got {value!r}")


def _types() -> dict[str, type]:
    kinds = {"str": str, "int": int, "float": float, "bool": bool}
    return {f.name: kinds[f.type] for f in fields(ServeConfig)}


def from_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(_types()))
    if unknown:
        raise ValueError(f"config file {path}: unknown settings {unknown}; known: {sorted(_types())}")
    return data


def from_env(environ: Mapping[str, str]) -> dict:
    out = {}
    for name in _types():
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = environ[key]
    return out


def load(flags: Mapping[str, object], environ: Mapping[str, str], path: str | None = None) -> ServeConfig:
    """Flags (``None`` where not given) over environment over file over defaults."""
    types = _types()
    layers = [("config file", from_file(path) if path else {}), ("environment", from_env(environ)),
              ("command line", {k: v for k, v in flags.items() if v is not None and k in types})]
    merged: dict[str, object] = {}
    for source, values in layers:
        for name, value in values.items():
            merged[name] = _coerce(name, types[name], value, source)
    return ServeConfig(**merged)
