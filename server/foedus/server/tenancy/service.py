"""Tenancy rules: tenants, keys, authentication, and the audit log."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foedus.client_sdk.apikeys import KEY_ID_LENGTH, KEY_PREFIX, format_key, new_key
from foedus.server import validation
from foedus.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from foedus.server.store.base import Store
from foedus.server.store.records import AuditRecord, KeyRecord, Page, Role, TenantRecord, TenantState
from foedus.server.tenancy.principal import Principal

ADMIN_KEY_FILE = "admin.key"

log = logging.getLogger("foedus.server.tenancy")


def now_us() -> int:
    return time.time_ns() // 1000


def hash_secret(secret: str) -> bytes:
    # Secrets are 256 random bits, so a plain SHA-256 is as strong as a slow hash would be.
    return hashlib.sha256(secret.encode()).digest()


def parse_key(token: str) -> tuple[str, str]:
    """Splits `fds_<key id>_<secret>` into key id and secret."""
    if not token.startswith(KEY_PREFIX) or len(token) < len(KEY_PREFIX) + KEY_ID_LENGTH + 2:
        raise Unauthenticated("malformed API key: expected fds_<id>_<secret>")
    key_id = token[len(KEY_PREFIX) : len(KEY_PREFIX) + KEY_ID_LENGTH]
    rest = token[len(KEY_PREFIX) + KEY_ID_LENGTH :]
    if not rest.startswith("_"):
        raise Unauthenticated("malformed API key: expected fds_<id>_<secret>")
    return key_id, rest[1:]


@dataclass(frozen=True, slots=True)
class NewKey:
    record: KeyRecord
    secret: str
    """The whole key as the caller passes it: fds_<id>_<secret>. Shown once."""


class TenancyService:
    """Authenticates keys and manages tenants, keys and the audit log."""

    def __init__(self, store: Store, *, clock: Callable[[], int] = now_us, cache_ttl_s: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        self.on_keys_changed: Callable[[], None] | None = None
        """Called after a key was revoked or a tenant's state changed (the server tells the other
        replicas, which then forget their cached principals at once)."""

    # --- authentication ------------------------------------------------------------------------
    def authenticate(self, token: str) -> Principal:
        """The principal of a key, or Unauthenticated / PermissionDenied (disabled tenant).

        Hits are cached for a few seconds; revoking a key or disabling a tenant clears the cache of
        this replica at once, and of the others when they hear of it (`forget_cached`; at the
        latest within the cache's TTL).
        """
        hit = self.cached(token)
        if hit is not None:
            return hit
        key_id, secret = parse_key(token)
        found = self._store.find_key(key_id)
        if found is None or not hmac.compare_digest(found[0].secret_hash, hash_secret(secret)):
            raise Unauthenticated("unknown API key")
        key, tenant_state = found
        if key.revoked_at_us is not None:
            raise Unauthenticated(f"API key {key_id} was revoked")
        if tenant_state == TenantState.DISABLED:
            raise PermissionDenied(f"tenant {key.tenant!r} is disabled")
        principal = Principal(key_id=key.key_id, role=key.role, tenant=key.tenant)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (principal, time.monotonic() + self._cache_ttl_s)
        return principal

    def cached(self, token: str) -> Principal | None:
        """The principal of a recently authenticated key, without touching the store."""
        hit = self._cache.get(token)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def forget_cached(self) -> None:
        """Drops every cached principal (a key or tenant changed, here or in another replica)."""
        with self._lock:
            self._cache.clear()

    def _keys_changed(self) -> None:
        self.forget_cached()
        if self.on_keys_changed is not None:
            self.on_keys_changed()

    # --- bootstrap -----------------------------------------------------------------------------
    def bootstrap_admin(self, data_dir: Path, provided: str | None = None) -> str | None:
        """On the first start: registers the platform admin key.

        Without `provided` it creates a key and writes it to DATA_DIR/admin.key (0600). With
        `provided` (a well-formed key from the `admin_key_file` setting) it stores that key's hash
        and writes nothing. Returns the new key id, or None when an admin key exists already; then a
        provided key that is not a live admin key (another admin key was registered first, or it was
        revoked) only draws a warning: it does not authenticate, and the existing keys stay.
        """
        if provided is None:
            if self._store.count_keys(int(Role.ADMIN)) > 0:
                return None
            new = self._new_key(None, Role.ADMIN, "platform admin (created on first start)", "bootstrap")
            path = data_dir / ADMIN_KEY_FILE
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new.secret + "\n")
            os.chmod(path, 0o600)
            return new.record.key_id
        key_id, secret = parse_key(provided)
        if self._store.find_key(key_id) is None and self._store.count_keys(int(Role.ADMIN)) == 0:
            try:
                self._store_key(None, Role.ADMIN, "platform admin (provided)", "bootstrap", key_id, secret)
            except Exception:
                if self._store.find_key(key_id) is None:
                    raise
                # Another replica registered it at the same moment.
            else:
                return key_id
        found = self._store.find_key(key_id)
        live = (
            found is not None
            and found[0].role == Role.ADMIN
            and found[0].revoked_at_us is None
            and hmac.compare_digest(found[0].secret_hash, hash_secret(secret))
        )
        if not live:
            log.warning(
                "admin_key_file holds key %s, which is not a live platform admin key of this database "
                "(another admin key was registered first, or it was revoked): it does not authenticate; "
                "use the existing admin key, or remove the setting",
                key_id,
            )
        return None

    def _new_key(self, tenant: str | None, role: Role, description: str, created_by: str) -> NewKey:
        key_id, secret = new_key()
        return self._store_key(tenant, role, description, created_by, key_id, secret)

    def _store_key(
        self, tenant: str | None, role: Role, description: str, created_by: str, key_id: str, secret: str
    ) -> NewKey:
        record = KeyRecord(
            key_id=key_id,
            tenant=tenant,
            role=role,
            description=validation.description(description),
            secret_hash=hash_secret(secret),
            created_at_us=self._clock(),
            created_by=created_by,
        )
        self._store.create_key(record)
        return NewKey(record, format_key(key_id, secret))

    # --- tenants -------------------------------------------------------------------------------
    def create_tenant(
        self, caller: Principal, name: str, display_name: str, create_owner_key: bool
    ) -> tuple[TenantRecord, NewKey | None]:
        validation.tenant_name(name)
        if len(display_name) > 200:
            raise InvalidArgument("display_name is longer than 200 characters")
        tenant = self._store.create_tenant(name, display_name or name, caller.key_id, self._clock())
        owner = (
            self._new_key(name, Role.OWNER, "first owner key", caller.key_id) if create_owner_key else None
        )
        return tenant, owner

    def get_tenant(self, caller: Principal, name: str) -> TenantRecord:
        if not caller.is_admin:
            if name and name != caller.tenant:
                raise NotFound(f"tenant {name!r} not found")
            name = caller.own_tenant()
        return self._store.get_tenant(validation.tenant_name(name))

    def list_tenants(self, page_token: str, page_size: int) -> Page[TenantRecord]:
        return self._store.list_tenants(page_token, page_size)

    def set_tenant_state(self, name: str, state: TenantState) -> TenantRecord:
        tenant = self._store.set_tenant_state(validation.tenant_name(name), state)
        self._keys_changed()
        return tenant

    # --- keys ----------------------------------------------------------------------------------
    def _key_scope(self, caller: Principal, tenant: str) -> str | None:
        """The tenant whose keys the caller manages: owners their own; the admin a named tenant's,
        or without a tenant the platform's admin keys (None)."""
        if caller.is_admin:
            if not tenant:
                return None
            return self._store.get_tenant(validation.tenant_name(tenant)).name
        own = caller.own_tenant()
        if tenant and tenant != own:
            raise NotFound(f"tenant {tenant!r} not found")
        return own

    def create_key(self, caller: Principal, tenant: str, role: Role | None, description: str) -> NewKey:
        scope = self._key_scope(caller, tenant)
        if scope is None:
            if role is not Role.ADMIN:
                raise InvalidArgument(
                    "without a tenant the admin creates platform admin keys (role admin); "
                    "give the tenant for an owner, editor, viewer or agent key"
                )
            return self._new_key(None, Role.ADMIN, description, caller.key_id)
        if role not in (Role.VIEWER, Role.EDITOR, Role.OWNER, Role.AGENT):
            raise InvalidArgument("role must be one of owner, editor, viewer, agent")
        return self._new_key(scope, role, description, caller.key_id)

    def list_keys(
        self, caller: Principal, tenant: str, include_revoked: bool, page_token: str, page_size: int
    ) -> Page[KeyRecord]:
        return self._store.list_keys(self._key_scope(caller, tenant), include_revoked, page_token, page_size)

    def revoke_key(self, caller: Principal, tenant: str, key_id: str) -> KeyRecord:
        scope = self._key_scope(caller, tenant)
        if not key_id:
            raise InvalidArgument("key_id is required")
        if scope is None:
            found = self._store.find_key(key_id)
            live = found is not None and found[0].tenant is None and found[0].revoked_at_us is None
            if live and self._store.count_keys(int(Role.ADMIN)) <= 1:
                raise FailedPrecondition(
                    f"{key_id} is the last platform admin key: create another one (key create --role admin) "
                    "before revoking it"
                )
        record = self._store.revoke_key(scope, key_id, self._clock())
        self._keys_changed()
        return record

    # --- audit ---------------------------------------------------------------------------------
    def record(self, entry: AuditRecord) -> None:
        self._store.append_audit(entry)

    def list_audit(
        self, caller: Principal, tenant: str, page_token: str, page_size: int
    ) -> Page[AuditRecord]:
        if caller.is_admin:
            # No tenant: the platform's own entries (tenants created, disabled, ...).
            scope = self._store.get_tenant(validation.tenant_name(tenant)).name if tenant else None
        else:
            own = caller.own_tenant()
            if tenant and tenant != own:
                raise NotFound(f"tenant {tenant!r} not found")
            scope = own
        return self._store.list_audit(scope, page_token, page_size)
