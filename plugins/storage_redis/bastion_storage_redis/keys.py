"""Redis key names: every key of a domain under one hash tag.

Layout, with ``P = <prefix>:{<domain>}:`` (the braces are Redis Cluster's
hash tag, so one domain's keys share one slot)::

    P seq                       INCR counter giving records their creation order
    P r:<model>:<id>            hash  v=version  d=JSON data  x=JSON list of its index keys after P
    P o:<model>                 zset  id scored by creation sequence
    P i:<model>:<field>:<token> set   ids whose indexed field has that value
    P h:<model>:<id>            list  a record's kept versions, oldest first, each a JSON object
    P hr:<model>                zset  removed ids whose history is kept, scored by the number of their latest removal
    P s:<key>                   hash  v=JSON value  e=expiry (plain key)
                                zset  member scored by expiry (window)
    P w:<key>                   hash  member=weight (window weights)
    <prefix>:domains:<model>    set   domains that ever inserted a record of the model

Parts that are followed by another part (domain, model, field) are escaped so
that ``:`` and braces cannot make two names collide or end the hash tag early;
the last part (id, token, state key) is kept as given, which is unambiguous.
"""

from __future__ import annotations

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})


def escape(part: str) -> str:
    """Escape a key part that another part follows."""
    return part.translate(_ESCAPES)


def unescape(part: str) -> str:
    """The key part :func:`escape` was given (administration reads domains and models back from key names)."""
    if "%" not in part:
        return part
    return part.replace("%3A", ":").replace("%7B", "{").replace("%7D", "}").replace("%25", "%")


class Keys:
    """Names the keys of one deployment (its ``key_prefix``)."""

    #: Domain prefixes remembered (each call names its domain); the memo restarts past this many.
    MEMO = 4096

    def __init__(self, prefix: str = "bastion"):
        self.prefix = prefix
        self._tags: dict[str, str] = {}

    def domain(self, domain: str) -> str:
        """The prefix every key of ``domain`` starts with, hash tag included."""
        try:
            return self._tags[domain]
        except KeyError:
            pass
        # An empty tag "{}" would not act as a tag, so an empty domain gets a marker.
        tag = f"{self.prefix}:{{{escape(domain) or '%'}}}:"
        if len(self._tags) >= self.MEMO:
            self._tags.clear()
        self._tags[domain] = tag
        return tag

    def seq(self, domain: str) -> str:
        """The creation-sequence counter of a domain."""
        return self.domain(domain) + "seq"

    def record_prefix(self, domain: str, model: str) -> str:
        """The record key of ``model`` without its id."""
        return f"{self.domain(domain)}r:{escape(model)}:"

    def record(self, domain: str, model: str, id: str) -> str:
        """The hash holding one record."""
        return self.record_prefix(domain, model) + id

    def order(self, domain: str, model: str) -> str:
        """The sorted set of a model's ids in creation order."""
        return f"{self.domain(domain)}o:{escape(model)}"

    def index(self, domain: str, model: str, field: str, token: str) -> str:
        """The set of ids whose ``field`` has the value of ``token`` (kernel.core.driver.index_token)."""
        return self.domain(domain) + self.index_suffix(model, field, token)

    @staticmethod
    def index_suffix(model: str, field: str, token: str) -> str:
        """An index key without its domain prefix, as records list their own index keys."""
        return f"i:{escape(model)}:{escape(field)}:{token}"

    def history_prefix(self, domain: str, model: str) -> str:
        """The history list key of ``model`` without its id."""
        return f"{self.domain(domain)}h:{escape(model)}:"

    def history(self, domain: str, model: str, id: str) -> str:
        """The list of a record's kept versions (a model that keeps history)."""
        return self.history_prefix(domain, model) + id

    def removals(self, domain: str, model: str) -> str:
        """The sorted set of a model's removed ids whose history is kept, by the number of their latest removal."""
        return f"{self.domain(domain)}hr:{escape(model)}"

    def state(self, domain: str, key: str) -> str:
        """The plain key or window ``key``."""
        return f"{self.domain(domain)}s:{key}"

    def weights(self, domain: str, key: str) -> str:
        """The weights of window ``key``."""
        return f"{self.domain(domain)}w:{key}"

    def registry(self, model: str) -> str:
        """The set of domains holding ``model`` (outside every tag: administration only)."""
        return f"{self.prefix}:domains:{escape(model)}"
