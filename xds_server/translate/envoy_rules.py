"""Envoy's own validation rules, enforced on what we are about to publish.

Envoy declares the constraints of its configuration as protoc-gen-validate annotations on the
protos (`validate.rules` on fields, `validate.required` on oneofs); a proxy NACKs a resource
that breaks one. The descriptors ship in `xds-protos`, so the rules are read from them, not
restated here: a new Envoy version brings its rules with its protos. The PyPI runtime of
protoc-gen-validate cannot run on protobuf 7, hence this interpreter of the rule kinds the
messages we emit carry (strings, numbers, enums, durations, repeated, maps, Any, required
messages and oneofs). `Any` payloads (filter configs, TLS contexts) are unpacked and checked
too. The check of a message type is compiled once; a message is walked field by field.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import re2  # type: ignore[import-untyped]
from google.protobuf import any_pb2, duration_pb2, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

Violations = list[str]
FieldCheck = Callable[[Any, str, Violations], None]
FieldRule = tuple[FieldDescriptor, FieldCheck | None, bool]
"""A field, the check of its value (None: only presence matters), and whether it must be set
(messages only: a scalar always has a value)."""

HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+\Z")
HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*\Z")
HEADER_LOOSE = re.compile(r"^[^\x00\x0a\x0d]*\Z")
r"""PGV's well-known regexes: strict header names and values, and the loose form of both
(`\Z`: RE2's `$`, which a final line break does not satisfy, unlike Python's)."""

BOUNDS: tuple[tuple[str, Callable[[Any, Any], bool], str], ...] = (
    ("gt", operator.gt, ">"),
    ("gte", operator.ge, ">="),
    ("lt", operator.lt, "<"),
    ("lte", operator.le, "<="),
)
_FIELD_RULES = validate_pb2.rules
_ONEOF_REQUIRED = validate_pb2.required
_MESSAGE_DISABLED = (validate_pb2.disabled, validate_pb2.ignored)
BY_CONTENT = frozenset({"envoy.config.route.v3.Route"})
"""Message types whose violations are remembered by content: every route is in two virtual
hosts (HTTP and HTTPS), and a change to one path of a host re-checks its other routes."""
BY_CONTENT_LIMIT = 100_000
"""Contents remembered at most (then forgotten all at once): memory stays bounded."""
_by_content: dict[tuple[str, bytes], Violations] = {}
_compiled: dict[str, list[FieldRule]] = {}
_required_oneofs: dict[str, list[str]] = {}
_patterns: dict[str, re.Pattern[str]] = {}


class Checked:
    """Violations per message object. The translation memo hands back the very same object
    for unchanged content, so an unchanged virtual host is not walked again."""

    def __init__(self) -> None:
        self._found: dict[int, tuple[Message, Violations]] = {}
        self._used: set[int] = set()

    def of(self, message: Message) -> Violations:
        found = self._found.get(id(message))
        if found is None or found[0] is not message:
            found = self._found[id(message)] = (message, violations(message))
        self._used.add(id(message))
        return found[1]

    def forget_unused(self) -> None:
        """Drop what the last round did not look at (memory stays flat under churn)."""
        for key in self._found.keys() - self._used:
            del self._found[key]
        self._used = set()


def violations(message: Message) -> Violations:
    """Every rule `message` breaks, as `field.path: what is wrong`; empty when Envoy would
    accept it as far as its declared rules go."""
    found: Violations = []
    _check_message(message, "", found)
    return found


def _check_message(message: Message, where: str, found: Violations) -> None:
    descriptor = message.DESCRIPTOR
    if descriptor.full_name in BY_CONTENT:
        _check_by_content(message, where, found)
        return
    _check_fields(message, where, found)


def _check_by_content(message: Message, where: str, found: Violations) -> None:
    key = (message.DESCRIPTOR.full_name, message.SerializeToString(deterministic=True))
    known = _by_content.get(key)
    if known is None:
        known = []
        _check_fields(message, "", known)
        if len(_by_content) >= BY_CONTENT_LIMIT:
            _by_content.clear()
        _by_content[key] = known
    found += [f"{where}.{violation}" if where else violation for violation in known]


def _check_fields(message: Message, where: str, found: Violations) -> None:
    descriptor = message.DESCRIPTOR
    if isinstance(message, any_pb2.Any):
        inner = _unpack(message)
        if inner is not None:
            _check_message(inner, where, found)
        return
    options = descriptor.GetOptions()
    if any(options.Extensions[flag] for flag in _MESSAGE_DISABLED):
        return
    for oneof in _oneofs(descriptor):
        if message.WhichOneof(oneof) is None:
            found.append(f"{_at(where, oneof)}: one of its fields must be set")
    beyond = BEYOND_ANNOTATIONS.get(descriptor.full_name)
    if beyond is not None:
        beyond(message, where, found)
    for field, check, required in _checks(descriptor):
        # A field with presence (a message, a oneof member, an optional scalar) that is not
        # set has no value to check; a plain scalar always has one (its zero).
        if field.has_presence and not message.HasField(field.name):
            if required and field.containing_oneof is None:  # a oneof's other case is fine
                found.append(f"{_at(where, field.name)}: required")
            continue
        if check is not None:
            check(getattr(message, field.name), _at(where, field.name), found)


def _unmodifiable_header(message: Any, where: str, found: Violations) -> None:
    """Envoy's HeaderParser refuses to add or set `host` or a `:`-prefixed header (a rule in
    its code, not in its protos' annotations)."""
    key = message.header.key
    if key.lower() == "host" or key.startswith(":"):
        found.append(f"{_at(where, 'header.key')}: :-prefixed or host headers may not be modified")


def _unremovable_headers(message: Any, where: str, found: Violations) -> None:
    for field in ("request_headers_to_remove", "response_headers_to_remove"):
        for index, key in enumerate(getattr(message, field)):
            if key.lower() == "host" or key.startswith(":"):
                at = _at(where, f"{field}[{index}]")
                found.append(f"{at}: :-prefixed or host headers may not be removed")


REGEX_PROGRAM_MAX = 100
"""Envoy refuses a regular expression whose RE2 program is larger (its runtime default of
`re2.max_program_size.error_level`)."""
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def _re2_regex(message: Any, where: str, found: Violations) -> None:
    """What Envoy's RE2 refuses (lookarounds, backreferences, a program too large), read by
    RE2 itself: Python's engine accepts `(?=x)`, and Envoy would NACK it."""
    try:
        size = re2.compile(message.regex, options=_RE2_OPTIONS).programsize
    except re2.error as exc:
        found.append(f"{_at(where, 'regex')}: RE2 cannot read {message.regex[:60]!r} ({exc})")
        return
    if size > REGEX_PROGRAM_MAX:
        found.append(f"{_at(where, 'regex')}: RE2 program size {size} is over Envoy's"
                     f" {REGEX_PROGRAM_MAX}")  # fmt: skip


BEYOND_ANNOTATIONS: dict[str, FieldCheck] = {
    "envoy.type.matcher.v3.RegexMatcher": _re2_regex,
    "envoy.config.core.v3.HeaderValueOption": _unmodifiable_header,
    "envoy.config.route.v3.Route": _unremovable_headers,
    "envoy.config.route.v3.VirtualHost": _unremovable_headers,
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": _unremovable_headers,
}
"""Rules Envoy enforces in code, by message type: checked beside the annotated ones."""


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _oneofs(descriptor: Any) -> list[str]:
    names = _required_oneofs.get(descriptor.full_name)
    if names is None:
        names = [o.name for o in descriptor.oneofs if o.GetOptions().Extensions[_ONEOF_REQUIRED]]
        _required_oneofs[descriptor.full_name] = names
    return names


def _checks(descriptor: Any) -> list[FieldRule]:
    checks = _compiled.get(descriptor.full_name)
    if checks is None:
        checks = []
        for field in descriptor.fields:  # nested types are compiled when first met
            rules = field.GetOptions().Extensions[_FIELD_RULES]
            required = _singular_message(field) and (
                rules.message.required or rules.duration.required or rules.any.required
            )
            check = _field_check(field, rules)
            if check is not None or required:
                checks.append((field, check, required))
        _compiled[descriptor.full_name] = checks
    return checks


def _singular_message(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated


def _field_check(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> FieldCheck | None:
    if field.is_repeated:
        entry = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if entry is not None and entry.GetOptions().map_entry:
            return _map_check(field, rules)
        return _repeated_check(field, rules)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message_check(rules)
    return _scalar_check(field, rules) if rules.ListFields() else None


def _message_check(rules: validate_pb2.FieldRules) -> FieldCheck | None:
    """A set message: its own bounds (durations), then its fields, unless skipped."""
    if rules.message.skip:
        return None
    bounds = _duration_check(rules.duration) if rules.HasField("duration") else None

    def check(value: Message, where: str, found: Violations) -> None:
        if bounds is not None:
            bounds(value, where, found)
        _check_message(value, where, found)

    return check


def _repeated_check(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> FieldCheck | None:
    repeated = rules.repeated
    items_rules = repeated.items if repeated.HasField("items") else None
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    item_check = _scalar_check(field, items_rules) if items_rules and not is_message else None
    if not is_message and item_check is None and not repeated.ListFields():
        return None

    def check(values: Any, where: str, found: Violations) -> None:
        count = len(values)
        if repeated.ignore_empty and count == 0:
            return
        if repeated.HasField("min_items") and count < repeated.min_items:
            found.append(f"{where}: at least {repeated.min_items} items, got {count}")
        if repeated.HasField("max_items") and count > repeated.max_items:
            found.append(f"{where}: at most {repeated.max_items} items, got {count}")
        if repeated.unique and not is_message and len(set(values)) != count:
            found.append(f"{where}: items must be unique")
        for index, value in enumerate(values):
            if is_message:
                _check_message(value, f"{where}[{index}]", found)
            elif item_check is not None:
                item_check(value, f"{where}[{index}]", found)

    return check


def _map_check(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> FieldCheck:
    rule = rules.map
    entry = field.message_type
    assert entry is not None
    key_check = _scalar_check(entry.fields_by_name["key"], rule.keys)
    value_field = entry.fields_by_name["value"]
    message_values = value_field.type == FieldDescriptor.TYPE_MESSAGE

    def check(values: Any, where: str, found: Violations) -> None:
        if rule.HasField("min_pairs") and len(values) < rule.min_pairs:
            found.append(f"{where}: at least {rule.min_pairs} entries")
        for key in values:
            if key_check is not None and rule.HasField("keys"):
                key_check(key, f"{where}[{key!r}]", found)
            if message_values:
                _check_message(values[key], f"{where}[{key!r}]", found)

    return check


def _scalar_check(
    field: FieldDescriptor, rules: validate_pb2.FieldRules | None
) -> FieldCheck | None:
    if rules is None:
        return None
    kind = rules.WhichOneof("type")
    if kind == "string":
        return _string_check(rules.string)
    if kind == "bytes":
        return _bytes_check(rules.bytes)
    if kind == "enum":
        return _enum_check(field, rules.enum)
    if kind == "bool":
        return _const_check(rules.bool)
    if kind in (
        "uint32",
        "uint64",
        "int32",
        "int64",
        "double",
        "float",
        "sint32",
        "sint64",
        "fixed32",
        "fixed64",
        "sfixed32",
        "sfixed64",
    ):
        return _number_check(getattr(rules, kind))
    return None


def _pattern(text: str) -> re.Pattern[str]:
    found = _patterns.get(text)
    if found is None:
        found = _patterns[text] = re.compile(re2_anchors(text))
    return found


def re2_anchors(pattern: str) -> str:
    """An RE2 pattern for Python's engine: RE2's `$` (outside a class, unescaped) matches at
    the very end only; Python's also before a final line break, which let a header value
    ending in LF through a check Envoy then failed."""
    out, escaped, in_class = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            out.append("\\Z")
            continue
        out.append(char)
    return "".join(out)


def _string_check(rule: validate_pb2.StringRules) -> FieldCheck:
    pattern = _pattern(rule.pattern) if rule.HasField("pattern") else None
    known = None
    if rule.HasField("well_known_regex"):
        loose = not rule.strict
        if loose:
            known = HEADER_LOOSE
        elif rule.well_known_regex == validate_pb2.HTTP_HEADER_NAME:
            known = HEADER_NAME
        else:
            known = HEADER_VALUE
    allowed = list(rule.__getattribute__("in"))
    forbidden = list(rule.not_in)

    def check(value: str, where: str, found: Violations) -> None:
        if rule.ignore_empty and value == "":
            return
        shown = repr(value) if len(value) <= 60 else repr(value[:60]) + "…"
        if rule.HasField("min_len") and len(value) < rule.min_len:
            found.append(f"{where}: at least {rule.min_len} characters, got {shown}")
        if rule.HasField("max_len") and len(value) > rule.max_len:
            found.append(f"{where}: at most {rule.max_len} characters")
        if rule.HasField("min_bytes") and len(value.encode()) < rule.min_bytes:
            found.append(f"{where}: at least {rule.min_bytes} bytes, got {shown}")
        if rule.HasField("max_bytes") and len(value.encode()) > rule.max_bytes:
            found.append(f"{where}: at most {rule.max_bytes} bytes")
        if pattern is not None and not pattern.search(value):
            found.append(f"{where}: must match {rule.pattern}, got {shown}")
        if known is not None and not known.search(value):
            found.append(f"{where}: not a valid HTTP header text, got {shown}")
        if rule.HasField("prefix") and not value.startswith(rule.prefix):
            found.append(f"{where}: must start with {rule.prefix!r}, got {shown}")
        if rule.HasField("suffix") and not value.endswith(rule.suffix):
            found.append(f"{where}: must end with {rule.suffix!r}, got {shown}")
        if allowed and value not in allowed:
            found.append(f"{where}: must be one of {allowed}, got {shown}")
        if value in forbidden:
            found.append(f"{where}: must not be {shown}")

    return check


def _bytes_check(rule: validate_pb2.BytesRules) -> FieldCheck:
    def check(value: bytes, where: str, found: Violations) -> None:
        if rule.ignore_empty and not value:
            return
        if rule.HasField("min_len") and len(value) < rule.min_len:
            found.append(f"{where}: at least {rule.min_len} bytes")
        if rule.HasField("max_len") and len(value) > rule.max_len:
            found.append(f"{where}: at most {rule.max_len} bytes")

    return check


def _enum_check(field: FieldDescriptor, rule: validate_pb2.EnumRules) -> FieldCheck:
    defined = {v.number for v in field.enum_type.values} if field.enum_type else set()
    forbidden = set(rule.not_in)
    allowed = set(rule.__getattribute__("in"))

    def check(value: int, where: str, found: Violations) -> None:
        if rule.defined_only and value not in defined:
            found.append(f"{where}: {value} is not a defined value")
        if value in forbidden or (allowed and value not in allowed):
            found.append(f"{where}: {value} is not allowed")

    return check


def _const_check(rule: Any) -> FieldCheck:
    def check(value: Any, where: str, found: Violations) -> None:
        if rule.HasField("const") and value != rule.const:
            found.append(f"{where}: must be {rule.const}")

    return check


def _number_check(rule: Any) -> FieldCheck:
    allowed = list(rule.__getattribute__("in"))
    forbidden = list(rule.not_in)

    def check(value: float, where: str, found: Violations) -> None:
        if getattr(rule, "ignore_empty", False) and value == 0:
            return
        for name, holds, sign in BOUNDS:
            if rule.HasField(name) and not holds(value, getattr(rule, name)):
                found.append(f"{where}: must be {sign} {getattr(rule, name)}, got {value}")
        if rule.HasField("const") and value != rule.const:
            found.append(f"{where}: must be {rule.const}, got {value}")
        if (allowed and value not in allowed) or value in forbidden:
            found.append(f"{where}: {value} is not allowed")

    return check


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _duration_check(rule: validate_pb2.DurationRules) -> FieldCheck:
    def check(value: duration_pb2.Duration, where: str, found: Violations) -> None:
        seconds = _seconds(value)
        for name, holds, sign in BOUNDS:
            if rule.HasField(name):
                limit = _seconds(getattr(rule, name))
                if not holds(seconds, limit):
                    found.append(f"{where}: must be {sign} {limit}s, got {seconds}s")

    return check


def _unpack(packed: any_pb2.Any) -> Message | None:
    """The message inside an Any, when its type is known here (every Envoy type is)."""
    try:
        cls = symbol_database.Default().GetSymbol(packed.TypeName())
    except KeyError:
        return None
    inner: Message = cls()
    return inner if packed.Unpack(inner) else None
