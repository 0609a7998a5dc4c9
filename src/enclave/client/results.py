"""Small typed results with a readable repr, for what the enclave's services answer.

Each result is still the service's JSON object (a `dict` subclass: `result["choices"]` and
`json.dumps(result)` keep working), with its keys also readable as attributes (`result.choices`),
nested objects wrapped the same way, and a one-glance repr instead of a nested dict:

    >>> ec.generate("Hello", max_new_tokens=4)
    Generation(text=' world, and the', finish_reason='length', usage=Usage(prompt=1, completion=4, total=5))
"""

from __future__ import annotations

from typing import Any

MAX_REPR_TEXT = 60


def wrap(value: Any, kind: type["Result"] | None = None) -> Any:
    """JSON as results: objects become `kind` (or `Result`), lists are wrapped item by item."""
    if isinstance(value, dict) and not isinstance(value, Result):
        return (kind or Result)(value)
    if isinstance(value, list):
        return [wrap(item) for item in value]
    return value


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > MAX_REPR_TEXT:
        return repr(value[:MAX_REPR_TEXT] + "...")
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} items]"
    return repr(value)


class Result(dict):
    """A service's JSON object, readable as attributes too."""

    # Keys shown in the repr (all scalar keys when empty).
    _shown: tuple[str, ...] = ()

    def __init__(self, data: dict | None = None, **extra: Any):
        super().__init__({key: wrap(value, self._nested(key)) for key, value in {**(data or {}), **extra}.items()})

    @classmethod
    def _nested(cls, key: str) -> type["Result"] | None:
        return Usage if key == "usage" else None

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None

    def __dir__(self):
        return [*super().__dir__(), *(k for k in self if isinstance(k, str) and k.isidentifier())]

    def to_dict(self) -> dict:
        """Plain dicts and lists all the way down."""
        def plain(value):
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value
        return plain(self)

    def _fields(self) -> list[tuple[str, Any]]:
        keys = self._shown or [k for k, v in self.items() if not isinstance(v, (dict, list))]
        return [(k, self[k]) for k in keys if k in self]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" if isinstance(v, Result) else f"{k}={_short(v)}" for k, v in self._fields())
        return f"{type(self).__name__}({inner})"

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython / Jupyter
        printer.text(repr(self) if not cycle else f"{type(self).__name__}(...)")


class Usage(Result):
    """What a call consumed, in tokens."""

    def __repr__(self) -> str:
        if {"prompt_tokens", "completion_tokens", "total_tokens"} <= set(self):
            return (f"Usage(prompt={self['prompt_tokens']}, completion={self['completion_tokens']}, "
                    f"total={self['total_tokens']})")
        return super().__repr__()


class Choice(Result):
    _shown = ("text", "finish_reason", "tokens")


class Generation(Result):
    """`generate`'s answer: `.text` (the first sample's), `.choices`, `.usage`, `.id`."""

    def __init__(self, data: dict | None = None, **extra: Any):
        super().__init__(data, **extra)
        if isinstance(self.get("choices"), list):
            dict.__setitem__(self, "choices", [Choice(c) if isinstance(c, dict) else c for c in self["choices"]])

    @property
    def text(self) -> str:
        return self["choices"][0]["text"] if self.get("choices") else ""

    @property
    def texts(self) -> list[str]:
        return [c["text"] for c in self.get("choices", [])]

    def _fields(self):
        choices = self.get("choices", [])
        if len(choices) == 1:
            fields = [("text", choices[0]["text"]), ("finish_reason", choices[0]["finish_reason"])]
        else:
            fields = [("texts", [c["text"] for c in choices])]
        return [*fields, ("usage", self.get("usage"))]


class Scores(Result):
    """`score`'s answer: `.tokens` ({token, logprob}), `.logprobs`, `.total_logprob`, `.perplexity`, `.usage`."""

    _shown = ("total_logprob", "perplexity", "usage")

    @property
    def logprobs(self) -> list[float]:
        return [t["logprob"] for t in self.get("tokens", [])]

    def _fields(self):
        return [("tokens", len(self.get("tokens", []))), *super()._fields()]


class NextTokens(list):
    """`next_token`'s answer: a list of (token, probability), most likely first, as before; the
    call's `.id` and `.usage` ride along."""

    def __init__(self, reply: dict):
        super().__init__((t["token"], t["probability"]) for t in reply.get("top", []))
        self.id, self.usage = reply.get("id"), wrap(reply.get("usage"), Usage)

    def __repr__(self) -> str:
        return "NextTokens(" + ", ".join(f"{token!r}: {p}" for token, p in self) + ")"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


class UsageReport(Result):
    """`usage`'s answer: the grant's allowances, what is used and left, the tier and its extraction bound."""

    _shown = ("project", "tier", "tokens", "tokens_today", "activation_bytes_today")

    def _fields(self):
        def left(key):
            part = self.get(key)
            return f"{part.get('remaining')}/{part.get('limit')} left" if isinstance(part, dict) else None
        fields = [("project", self.get("project")), ("tier", self.get("tier"))]
        return [*fields, *((k, left(k)) for k in ("tokens", "tokens_today", "logprob_calls_today",
                                                     "activation_bytes_today") if k in self)]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" if k not in ("project", "tier") else f"{k}={v!r}" for k, v in self._fields())
        return f"UsageReport({inner})"


class Activations(dict):
    """`activations`' answer: hook name -> numpy float16 array (as TransformerLens names and shapes
    them, without the batch axis), with `.tokens`, `.positions`, `.bytes`, `.usage` and `.id`."""

    def __init__(self, arrays: dict, reply: dict):
        super().__init__(arrays)
        self.id, self.model, self.bytes = reply.get("id"), reply.get("model"), reply.get("bytes")
        self.tokens, self.positions = reply.get("tokens", []), reply.get("positions", [])
        self.usage = wrap(reply.get("usage"), Usage)

    def __repr__(self) -> str:
        arrays = ", ".join(f"{name!r}: {tuple(a.shape)}" for name, a in self.items())
        return f"Activations({{{arrays}}}, dtype=float16, tokens={len(self.tokens)}, bytes={self.bytes})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))
