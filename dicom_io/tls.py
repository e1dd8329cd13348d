"""TLS contexts for the DICOM listener and for forwarding (PS3.15 Annex B secure transport).

Both sides use TLS 1.2 or newer with the library's default cipher selection. The listener asks for
a client certificate only when configured to; then a caller without a certificate signed by the
configured CA fails the handshake and never reaches association negotiation.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from deid_core.errors import ConfigError


def server_context(
    cert_file: Path,
    key_file: Path,
    client_ca_file: Path | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
        if client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(client_ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"node.tls: cannot load certificate or key: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    check_hostname: bool = True,
    where: str = "destination.tls",
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
        else:
            ctx.load_default_certs()
        if cert_file is not None and key_file is not None:
            ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load certificate, key or CA: {exc}") from None
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
