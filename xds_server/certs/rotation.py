"""Renewing leaves and rotating the CA without ever breaking trust.

Every call of `Rotator.step` reads the stores, does what is due and returns: the state lives
in the CA store, not in memory, so a rotator killed at any point carries on where the
stores say on its next step. A CA rotation takes three steps, each only after the one
before had `propagation_delay` to reach every proxy (the kubelet's secret-volume sync in a
cluster; milliseconds for Envoy's watched directory on one machine):

    trusting   new CA created; servers and proxies trust old + new
    reissuing  leaves issued by the new CA (the old one is still trusted)
    steady     the old CA dropped from every trust bundle
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cryptography import x509

from xds_server.certs import pki
from xds_server.certs.directory import (
    CA,
    LEAVES,
    Authority,
    CertDirectory,
    CertError,
    Finding,
    Profile,
    check_leaf,
    foreign,
    issue,
    new_authority,
)

RENEW_AT = 2 / 3
"""Fraction of a certificate's lifetime after which it is renewed."""
JITTER = 0.1
"""Up to this fraction of the lifetime earlier, spread by serial so replicas and restarts
agree on the moment while a fleet of directories does not renew all at once."""


def renew_time(cert: x509.Certificate) -> datetime.datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    span = end - start
    spread = (cert.serial_number % 10_007) / 10_007
    return start + span * RENEW_AT - span * JITTER * spread


@dataclass
class StepResult:
    actions: list[str] = field(default_factory=list)
    wake: datetime.datetime | None = None
    """When something will next be due (None: nothing scheduled)."""

    def note(self, action: str) -> None:
        self.actions.append(action)

    def wake_by(self, moment: datetime.datetime) -> None:
        self.wake = moment if self.wake is None else min(self.wake, moment)


class Rotator:
    def __init__(
        self,
        certs: CertDirectory,
        propagation_delay: float,
        clock: Callable[[], datetime.datetime] = pki.now,
        on_rotate: Callable[[str], None] | None = None,
    ) -> None:
        self.certs = certs
        self.delay = datetime.timedelta(seconds=propagation_delay)
        self.clock = clock
        self.on_rotate = on_rotate

    def step(self, force: bool = False, rotate_ca: bool = False) -> StepResult:
        result = StepResult()
        with self.certs.locked():
            authority = self.certs.authority()
            if authority is None:
                raise CertError(f"no CA in {self.certs.where}: run `xds-server certs init` first")
            advanced = self._advance(authority, rotate_ca, result)
            repaired = [self._reconcile(which, advanced, force, result) for which in LEAVES]
            if any(repaired) and advanced is authority and authority.phase != "steady":
                # A bundle fixed after an interruption starts its propagation wait again.
                self.certs.write_authority(replace(authority, since=self.clock().timestamp()))
                result.wake_by(self.clock() + self.delay)
        return result

    def _advance(self, authority: Authority, rotate_ca: bool, result: StepResult) -> Authority:
        now = self.clock()
        ready = datetime.datetime.fromtimestamp(authority.since, datetime.UTC) + self.delay
        if authority.phase == "steady":
            due = renew_time(authority.signer.cert)
            if rotate_ca or now >= due:
                return self._begin(authority, result)
            result.wake_by(due)
            return authority
        if now < ready:
            result.wake_by(ready)
            return authority
        if authority.phase == "trusting" and authority.next is not None:
            changed = replace(
                authority,
                signer=authority.next,
                next=None,
                phase="reissuing",
                since=now.timestamp(),
            )
            self._publish(changed, "CA rotation 2/3: leaves now come from the new CA", result)
            return changed
        newest = authority.signer.certificate
        changed = replace(authority, trusted=newest, phase="steady", since=now.timestamp())
        self._publish(changed, "CA rotation 3/3: the old CA is no longer trusted", result)
        return changed

    def _begin(self, authority: Authority, result: StepResult) -> Authority:
        following = new_authority(authority.profile).signer
        changed = replace(
            authority,
            trusted=authority.signer.certificate + following.certificate,
            phase="trusting",
            since=self.clock().timestamp(),
            next=following,
        )
        self._publish(
            changed,
            f"CA rotation 1/3: trusting old and new CA {pki.serial_hex(following.cert)}",
            result,
        )
        return changed

    def _publish(self, authority: Authority, action: str, result: StepResult) -> None:
        self.certs.write_authority(authority)
        result.note(action)
        result.wake_by(self.clock() + self.delay)
        if self.on_rotate is not None:
            self.on_rotate("ca")

    def _reconcile(self, which: str, authority: Authority, force: bool, result: StepResult) -> bool:
        """Make a leaf store what the CA store says it should be; True when only its trust
        bundle had to be fixed."""
        files = self.certs.leaf(which)
        mismatch = foreign(which, files, authority)
        if mismatch is not None:
            raise CertError(f"{mismatch}; nothing was changed")
        now = self.clock()
        try:
            cert = check_leaf(which, files, authority, now)
            reason = self._reissue_reason(cert, authority, force, now)
        except pki.InvalidPair as exc:
            reason = str(exc)
        if reason:
            pair = issue(authority, which)
            cert = self.certs.write_leaf(which, pair, authority, authority.trusted)
            result.note(f"{which}: new certificate {pki.serial_hex(cert)} ({reason})")
            if self.on_rotate is not None:
                self.on_rotate(which)
        elif files.get("ca.crt") != authority.trusted:
            pair = pki.Pair(files["tls.crt"], files["tls.key"])
            self.certs.write_leaf(which, pair, authority, authority.trusted)
            result.note(f"{which}: trust bundle now has {len(authority.bundle)} CA(s)")
            result.wake_by(renew_time(cert))
            return True
        result.wake_by(renew_time(cert))
        return False

    def _reissue_reason(
        self, cert: x509.Certificate, authority: Authority, force: bool, now: datetime.datetime
    ) -> str:
        if force:
            return "forced"
        if authority.phase != "trusting" and not pki.issued_by(cert, authority.signer.cert):
            return "issued by a CA that no longer signs"
        if now >= renew_time(cert):
            return "two thirds of its lifetime passed"
        return ""


def initialise(certs: CertDirectory, profile: Profile) -> StepResult:
    """Create the CA when there is none. An existing CA is kept whatever the flags say:
    re-running init must never invalidate the trust every proxy already has."""
    result = StepResult()
    with certs.locked():
        existing = certs.authority()
        if existing is None:
            authority = new_authority(profile)
            certs.write_authority(authority)
            result.note(f"new CA {pki.serial_hex(authority.signer.cert)}")
        elif existing.profile != profile:
            certs.write_authority(replace(existing, profile=profile))
            result.note("profile updated (names, identity or lifetimes); the CA is kept")
    return result


def inspect(certs: CertDirectory, now: datetime.datetime | None = None) -> list[Finding]:
    """What `certs check` prints and the server exports: one finding per store present."""
    moment = now or pki.now()
    findings: list[Finding] = []
    authority: Authority | None = None
    if certs.stores[CA].exists():
        try:
            authority = certs.authority()
        except CertError as exc:
            findings.append(Finding(CA, "error", str(exc)))
        else:
            if authority is None:
                findings.append(Finding(CA, "error", "no CA stored"))
            else:
                findings.append(_judge(CA, authority.signer.cert, moment, _phase(authority)))
    for which in LEAVES:
        if not certs.stores[which].exists():
            continue
        files = certs.leaf(which)
        mismatch = foreign(which, files, authority) if authority is not None else None
        if mismatch is not None:
            findings.append(Finding(which, "error", mismatch))
            continue
        try:
            cert = check_leaf(which, files, authority, dates=False)
        except pki.InvalidPair as exc:
            findings.append(Finding(which, "error", str(exc)))
            continue
        findings.append(_judge(which, cert, moment, ""))
    return findings


def _phase(authority: Authority) -> str:
    if authority.phase == "steady":
        return ""
    since = datetime.datetime.fromtimestamp(authority.since, datetime.UTC)
    return f"; CA rotation in progress: {authority.phase} since {since:%Y-%m-%dT%H:%M:%SZ}"


def _judge(store: str, cert: x509.Certificate, now: datetime.datetime, extra: str) -> Finding:
    expires = cert.not_valid_after_utc
    serial = pki.serial_hex(cert)
    left = expires - now
    if left <= datetime.timedelta(0):
        message = f"certificate {serial} EXPIRED {_span(-left)} ago ({expires:%Y-%m-%dT%H:%M:%SZ})"
        return Finding(store, "error", message + extra, expires, serial)
    if cert.not_valid_before_utc > now:
        message = f"certificate {serial} is not valid before {cert.not_valid_before_utc}"
        return Finding(store, "error", message + extra, expires, serial)
    message = f"certificate {serial} expires {expires:%Y-%m-%dT%H:%M:%SZ} ({_span(left)} left)"
    issued = cert.not_valid_before_utc
    if now >= renew_time(cert):
        message += ", due for renewal"
        return Finding(store, "attention", message + extra, expires, serial, issued=issued)
    return Finding(store, "ok", message + extra, expires, serial, issued=issued)


def _span(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {rest // 60}m"
    return f"{rest // 60}m {rest % 60}s"
