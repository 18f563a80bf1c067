"""The REST API's request bodies (pydantic); FastAPI answers 422 when one does not parse."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NamespaceSpec(Strict):
    """The namespace of a token list: what ``BlockHasher`` needs besides the tokens."""

    block_size: int = Field(16, ge=1, le=1 << 20)
    salt: str = ""
    model_id: str = ""
    kv_layout: str = ""
    adapter_id: str = ""


class BlockSelection(NamespaceSpec):
    """Either ``keys`` (hex) or ``tokens`` (ids, keyed in the namespace given beside them)."""

    keys: list[str] | None = Field(None, max_length=1 << 20)
    tokens: list[int] | None = Field(None, max_length=1 << 24)

    @model_validator(mode="after")
    def one_of(self):
        if (self.keys is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'keys' (hex block keys) or 'tokens' (token ids)")
        return self


class PinRequest(BlockSelection):
    tier: str | None = None  # the top tier when absent
    ttl: float | None = Field(None, gt=0, le=10 * 365 * 86400)


class FlushRequest(Strict):
    """Everything (no field), one tier, or one namespace (``namespace`` or its ``root``)."""

    tier: str | None = None
    namespace: NamespaceSpec | None = None
    root: str | None = None
    include_pinned: bool = False

    @model_validator(mode="after")
    def one_scope(self):
        if sum(x is not None for x in (self.tier, self.namespace, self.root)) > 1:
            raise ValueError("flush one scope at a time: 'tier', 'namespace' or 'root'")
        return self
