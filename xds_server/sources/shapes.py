"""The building blocks of a kind's schema: each check raises Invalid naming where the value
is and what was expected, so a rejection reads `spec.rules[0].matches[2].path.value:
expected …, got …`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from typing import Any


class Invalid(ValueError):
    """The object does not have the shape the Kubernetes API requires."""


Check = Callable[[Any, str], None]
"""Raises Invalid naming `where` when the value is not acceptable."""

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
WILDCARD_HOST = re.compile(rf"^(?=.{{1,253}}$)\*\.{_LABEL}(\.{_LABEL})*$")
"""`*.` and a DNS name: the API server accepts `*.com` too."""
PORT_NAME = re.compile(r"^(?=.{1,15}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
INVALID_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
INVALID_PATH_SUFFIXES = ("/..", "/.")
"""What the API server refuses in an Exact or Prefix Ingress path."""


def fail(where: str, expected: str, value: Any) -> Invalid:
    shown = repr(value)
    return Invalid(
        f"{where}: expected {expected}, got {shown[:60]}{'…' if len(shown) > 60 else ''}"
    )


def string(
    pattern: re.Pattern[str] | None = None, what: str = "a string", max_length: int | None = None
) -> Check:
    """The whole value must match (`$` alone lets a trailing line break through)."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise fail(where, what, value)
        if max_length is not None and len(value) > max_length:
            raise fail(where, f"{what} of {max_length} characters at most", value)

    return check


def choice(*allowed: str) -> Check:
    def check(value: Any, where: str) -> None:
        if value not in allowed:
            raise fail(where, "one of " + ", ".join(allowed), value)

    return check


def integer(low: int, high: int) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(where, f"a whole number {low}-{high}", value)

    return check


def boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise fail(where, "true or false", value)


def timestamp(value: Any, where: str) -> None:
    """YAML reads an unquoted RFC 3339 time as a datetime; JSON gives a string."""
    if not isinstance(value, str | datetime.datetime):
        raise fail(where, "an RFC 3339 timestamp", value)


def list_of(item: Check, min_items: int = 0, max_items: int | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) < min_items:
            raise fail(where, f"a list of at least {min_items}" if min_items else "a list", value)
        if max_items is not None and len(value) > max_items:
            raise Invalid(f"{where}: {max_items} items at most, got {len(value)}")
        for index, entry in enumerate(value):
            item(entry, f"{where}[{index}]")

    return check


def map_of(item: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise fail(where, "a mapping", value)
        for key, entry in value.items():
            if not isinstance(key, str):
                raise fail(f"{where} key", "a string", key)
            item(entry, f"{where}.{key}")

    return check


def obj(
    fields: Mapping[str, Check], required: tuple[str, ...] = (), then: Check | None = None
) -> Check:
    """A mapping with these fields (absent or null: not given); `then` checks the whole."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise fail(where, "a mapping", value)
        for name in required:
            if value.get(name) is None:
                raise Invalid(f"{where + '.' if where else ''}{name}: required")
        for name, field_check in fields.items():
            if value.get(name) is not None:
                field_check(value[name], f"{where}.{name}" if where else name)
        if then is not None:
            then(value, where)

    return check
