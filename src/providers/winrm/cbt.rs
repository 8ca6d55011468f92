//! TLS channel bindings (RFC 5929 `tls-server-end-point`). Provisional: SHA-256 only.

use sha2::Digest;

/// Hash of the server's end-entity certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    Ok(sha2::Sha256::digest(cert_der).to_vec())
}

/// GSS-API channel-binding application data: `tls-server-end-point:` + hash.
pub fn application_data(hash: &[u8]) -> Vec<u8> {
    let mut v = b"tls-server-end-point:".to_vec();
    v.extend_from_slice(hash);
    v
}
