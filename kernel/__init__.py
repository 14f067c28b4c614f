"""Bastion: a small, secure-by-default application server.

This module is the whole public API: everything a plugin may import, and the
one module of the kernel app and plugin authors import (``kernel.drivers`` is
the storage-driver author's facade, the same objects plus the built-in
``MemoryDriver`` and the conformance suite; ``kernel.testing`` is the
test-side API). Names not listed in ``__all__`` are the kernel's own and may
change without notice::

    from kernel import hookimpl, service, storage, current
"""

from kernel.core.config import (  # noqa: E402
    Bool,
    Choice,
    Config,
    Float,
    Int,
    List,
    Networks,
    Option,
    PluginSettings,
    Settings,
    Size,
    Str,
    load_config,
)
from kernel.core.context import Request, current  # noqa: E402
from kernel.core.driver import (  # noqa: E402
    DEFAULT_HISTORY_KEEP_REMOVED,
    MAX_ID_LENGTH,
    PAGED_SELECT,
    PROBE_DOMAIN,
    REMOVED_HISTORY_STEP,
    TENANTS,
    Capability,
    Change,
    Driver,
    LiveCounts,
    RecordStore,
    RecordVersion,
    Scalar,
    StateStore,
    StoredRecord,
    TenantCounts,
    TenantRecord,
    TenantStore,
    WindowEntry,
    capabilities_of,
    check_change,
    check_json,
    check_record_id,
    check_scalar,
    check_tenant_record,
    check_text,
    index_token,
    is_record_id,
    is_text,
    state_kind,
)
from kernel.core.errors import (  # noqa: E402
    BY_NAME,
    Abusive,
    AccountLocked,
    BastionError,
    ConfigError,
    EncryptionRequired,
    Error,
    ExpiredSession,
    Forbidden,
    InvalidCall,
    InvalidCiphertext,
    InvalidCredential,
    InvalidHost,
    InvalidSignature,
    KeyAgreementRequired,
    MaxActiveSessions,
    MethodNotAllowed,
    NotFound,
    PasskeyRequired,
    PayloadTooLarge,
    RecordNotFound,
    ReplayedCall,
    RequestTimeout,
    RequireSSL,
    SecondFactorRequired,
    ServiceUnavailable,
    StaleCall,
    Unauthorized,
    UnknownSession,
    UnsupportedMediaType,
    ValidationError,
    VersionConflict,
)
from kernel.core.hookspecs import hookimpl  # noqa: E402
from kernel.core.hosts import parse_domain  # noqa: E402
from kernel.core.jsonio import dumps, dumps_text, loads, loads_stored, loads_stored_all  # noqa: E402
from kernel.core.runtime import PROCESS_LOCAL, Runtime  # noqa: E402
from kernel.core.sealing import KeyPair, Sealing, SessionKeys, derive_keys, load_public  # noqa: E402
from kernel.core.services import json_type, service  # noqa: E402
from kernel.core.signing import Authentication, Credentials, b64url, b64url_decode  # noqa: E402
from kernel.core.store import Errors, Record, storage  # noqa: E402
from kernel.core.urls import StorageURL, redact  # noqa: E402
from kernel.http.routes import Routes  # noqa: E402
from kernel.ops.deploy import Problem, is_loopback_host  # noqa: E402
from kernel.version import __version__  # noqa: E402

__all__ = [
    "__version__",
    # writing a plugin
    "hookimpl", "service", "storage", "current", "Request", "Routes", "Runtime", "Errors", "Record",
    # configuration
    "Config", "load_config", "PluginSettings",
    "Settings", "Option", "Bool", "Choice", "Float", "Int", "List", "Networks", "Size", "Str",
    # JSON and text
    "dumps", "dumps_text", "loads", "loads_stored", "loads_stored_all", "json_type", "b64url", "b64url_decode",
    "parse_domain",
    # authentication
    "Credentials", "Authentication", "KeyPair", "Sealing", "SessionKeys", "derive_keys", "load_public",
    # operations: bastion check --deploy
    "Problem", "is_loopback_host",
    # storage drivers
    "Driver", "RecordStore", "StateStore", "Change", "StoredRecord", "RecordVersion", "WindowEntry", "Scalar", "check_change",
    "check_json", "check_record_id", "check_scalar", "check_text", "index_token", "is_record_id", "is_text",
    "MAX_ID_LENGTH", "PROBE_DOMAIN", "StorageURL", "redact", "PROCESS_LOCAL", "PAGED_SELECT",
    "Capability", "capabilities_of", "LiveCounts",
    "DEFAULT_HISTORY_KEEP_REMOVED", "REMOVED_HISTORY_STEP",
    "TENANTS", "TenantStore", "TenantRecord", "TenantCounts", "check_tenant_record", "state_kind",
    # errors
    "BastionError", "ConfigError", "BY_NAME", "Abusive", "AccountLocked", "Error", "ExpiredSession", "Forbidden",
    "InvalidCall", "InvalidCredential", "InvalidHost", "InvalidSignature", "MaxActiveSessions", "MethodNotAllowed",
    "NotFound", "PasskeyRequired", "PayloadTooLarge", "RecordNotFound", "ReplayedCall", "RequestTimeout", "RequireSSL",
    "SecondFactorRequired", "ServiceUnavailable", "StaleCall", "Unauthorized", "UnknownSession",
    "UnsupportedMediaType", "ValidationError",
    "VersionConflict", "KeyAgreementRequired", "EncryptionRequired", "InvalidCiphertext",
]
