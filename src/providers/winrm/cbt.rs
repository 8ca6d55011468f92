//! Channel binding tokens (CBT, Windows' "Extended Protection for Authentication") for
//! authentication over HTTPS: the token ties an authentication exchange to the TLS channel
//! it ran on, so a man in the middle that terminates TLS cannot relay it to the real host.
//!
//! The channel is named by RFC 5929 `tls-server-end-point`: a hash of the server's end-entity
//! certificate. The *application data* `b"tls-server-end-point:" || hash` goes into an
//! RFC 2744 `gss_channel_bindings_struct` with empty addresses:
//!
//! ```text
//! initiator_addrtype u32 LE (0) | initiator_address length u32 LE (0) | (no bytes)
//! acceptor_addrtype  u32 LE (0) | acceptor_address  length u32 LE (0) | (no bytes)
//! application_data   length u32 LE                                    | bytes
//! ```
//!
//! NTLM (MS-NLMP 2.2.2.1, `MsvAvChannelBindings`) carries the MD5 of that serialized struct;
//! a GSSAPI/Kerberos mechanism takes the same application data as its channel bindings
//! ([`application_data`] is the value to hand it).

use md5::{Digest, Md5};

/// RFC 5929 §4 prefix of the `tls-server-end-point` application data.
pub const TLS_SERVER_END_POINT_PREFIX: &[u8] = b"tls-server-end-point:";

/// RFC 2744 address types used in [`gss_channel_bindings_with_addresses`].
pub const GSS_C_AF_UNSPEC: u32 = 0;

/// Hash chosen for a certificate by RFC 5929 §4.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl CertificateHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha224 => sha2::Sha224::digest(data).to_vec(),
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// One DER element: tag, contents, and what follows it.
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    rest: &'a [u8],
}

fn der_read(input: &[u8]) -> Result<Tlv<'_>, String> {
    let (&tag, after_tag) = input.split_first().ok_or("truncated DER element")?;
    if tag & 0x1f == 0x1f {
        return Err("multi-byte DER tags are not expected in a certificate header".into());
    }
    let (&first, mut after_len) = after_tag.split_first().ok_or("truncated DER length")?;
    let len = if first & 0x80 == 0 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after_len.len() < n {
            return Err("unsupported or truncated DER length".into());
        }
        let mut l = 0usize;
        for &b in &after_len[..n] {
            l = (l << 8) | usize::from(b);
        }
        after_len = &after_len[n..];
        l
    };
    if after_len.len() < len {
        return Err("DER element longer than its input".into());
    }
    let (contents, rest) = after_len.split_at(len);
    Ok(Tlv {
        tag,
        contents,
        rest,
    })
}

fn der_expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<Tlv<'a>, String> {
    let t = der_read(input).map_err(|e| format!("{what}: {e}"))?;
    if t.tag != tag {
        return Err(format!(
            "{what}: expected DER tag {tag:#04x}, found {:#04x}",
            t.tag
        ));
    }
    Ok(t)
}

// DER contents of the object identifiers RFC 5929 needs.
const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]; // 1.2.840.10045.4.1
const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03]; // 1.2.840.10045.4.3
const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03]; // 1.2.840.10040.4.3
const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02]; // 2.16.840.1.101.3.4.2
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a]; // 1.3.14.3.2.26
const MD5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x05]; // 1.2.840.113549.2.5

/// `oid` = `arc` followed by one final sub-identifier below 128.
fn arc_leaf(oid: &[u8], arc: &[u8]) -> Option<u8> {
    match oid.strip_prefix(arc) {
        Some([leaf]) if *leaf < 0x80 => Some(*leaf),
        _ => None,
    }
}

/// The hash of a plain hash-algorithm OID (RSASSA-PSS parameters), upgraded per RFC 5929.
fn hash_of_digest_oid(oid: &[u8]) -> Option<CertificateHash> {
    if oid == SHA1 || oid == MD5 {
        return Some(CertificateHash::Sha256);
    }
    match arc_leaf(oid, NIST_HASH)? {
        1 => Some(CertificateHash::Sha256),
        2 => Some(CertificateHash::Sha384),
        3 => Some(CertificateHash::Sha512),
        4 => Some(CertificateHash::Sha224),
        _ => None,
    }
}

/// RSASSA-PSS-params: `hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1`.
fn pss_hash(params: &[u8]) -> Result<CertificateHash, String> {
    if params.is_empty() {
        return Ok(CertificateHash::Sha256);
    }
    let seq = der_expect(params, 0x30, "RSASSA-PSS parameters")?;
    match der_read(seq.contents) {
        Ok(t) if t.tag == 0xa0 => {
            let alg = der_expect(t.contents, 0x30, "RSASSA-PSS hashAlgorithm")?;
            let oid = der_expect(alg.contents, 0x06, "RSASSA-PSS hash OID")?;
            hash_of_digest_oid(oid.contents)
                .ok_or_else(|| "RSASSA-PSS certificate with an unsupported hash".to_string())
        }
        // No explicit hash: the default, SHA-1, which RFC 5929 upgrades to SHA-256.
        _ => Ok(CertificateHash::Sha256),
    }
}

/// The hash RFC 5929 §4.1 prescribes for a certificate: the hash of its signature algorithm,
/// with MD5 and SHA-1 replaced by SHA-256. Reads only as much DER as needed to reach
/// `Certificate.signatureAlgorithm`.
pub fn certificate_hash(cert_der: &[u8]) -> Result<CertificateHash, String> {
    let cert = der_expect(cert_der, 0x30, "Certificate")?;
    let tbs = der_expect(cert.contents, 0x30, "Certificate.tbsCertificate")?;
    let alg = der_expect(tbs.rest, 0x30, "Certificate.signatureAlgorithm")?;
    let oid_tlv = der_expect(alg.contents, 0x06, "signature algorithm OID")?;
    let (oid, params) = (oid_tlv.contents, oid_tlv.rest);
    if let Some(leaf) = arc_leaf(oid, PKCS1) {
        return match leaf {
            4 | 5 => Ok(CertificateHash::Sha256), // md5WithRSA, sha1WithRSA
            10 => pss_hash(params),
            11 => Ok(CertificateHash::Sha256),
            12 => Ok(CertificateHash::Sha384),
            13 => Ok(CertificateHash::Sha512),
            14 => Ok(CertificateHash::Sha224),
            _ => Err(format!(
                "unsupported RSA signature algorithm 1.2.840.113549.1.1.{leaf}"
            )),
        };
    }
    if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        return Ok(CertificateHash::Sha256);
    }
    if let Some(leaf) = arc_leaf(oid, ECDSA_SHA2) {
        return match leaf {
            1 => Ok(CertificateHash::Sha224),
            2 => Ok(CertificateHash::Sha256),
            3 => Ok(CertificateHash::Sha384),
            4 => Ok(CertificateHash::Sha512),
            _ => Err(format!(
                "unsupported ECDSA signature algorithm 1.2.840.10045.4.3.{leaf}"
            )),
        };
    }
    if let Some(leaf) = arc_leaf(oid, NIST_SIG) {
        // dsa-with-sha224 / dsa-with-sha256
        return match leaf {
            1 => Ok(CertificateHash::Sha224),
            2 => Ok(CertificateHash::Sha256),
            _ => Err(format!(
                "unsupported signature algorithm 2.16.840.1.101.3.4.3.{leaf}"
            )),
        };
    }
    // Ed25519/Ed448 and others: RFC 5929 defines no hash for them.
    Err(format!(
        "signature algorithm (OID bytes {}) has no RFC 5929 hash",
        hex::encode(oid)
    ))
}

/// RFC 5929 `tls-server-end-point` channel binding data: the certificate's hash (see
/// [`certificate_hash`]) over its DER encoding.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    Ok(certificate_hash(cert_der)?.digest(cert_der))
}

/// Channel-binding application data for a TLS server certificate:
/// `b"tls-server-end-point:" || tls_server_end_point(cert_der)`. This is the value NTLM hashes
/// (via [`ntlm_channel_binding_hash`]) and GSSAPI mechanisms take as `application_data`.
pub fn application_data(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    Ok(tls_server_end_point_application_data(
        &tls_server_end_point(cert_der)?,
    ))
}

/// `b"tls-server-end-point:" || hash` for an already computed end-point hash.
pub fn tls_server_end_point_application_data(hash: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(TLS_SERVER_END_POINT_PREFIX.len() + hash.len());
    v.extend_from_slice(TLS_SERVER_END_POINT_PREFIX);
    v.extend_from_slice(hash);
    v
}

/// Serialized RFC 2744 `gss_channel_bindings_struct` with both addresses given as
/// (address type, address bytes).
pub fn gss_channel_bindings_with_addresses(
    initiator: (u32, &[u8]),
    acceptor: (u32, &[u8]),
    app_data: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + initiator.1.len() + acceptor.1.len() + app_data.len());
    for (addrtype, addr) in [initiator, acceptor] {
        v.extend_from_slice(&addrtype.to_le_bytes());
        v.extend_from_slice(&(addr.len() as u32).to_le_bytes());
        v.extend_from_slice(addr);
    }
    v.extend_from_slice(&(app_data.len() as u32).to_le_bytes());
    v.extend_from_slice(app_data);
    v
}

/// Serialized RFC 2744 `gss_channel_bindings_struct` as TLS channel bindings use it:
/// unspecified, empty initiator and acceptor addresses, then `app_data`.
pub fn gss_channel_bindings(app_data: &[u8]) -> Vec<u8> {
    gss_channel_bindings_with_addresses((GSS_C_AF_UNSPEC, &[]), (GSS_C_AF_UNSPEC, &[]), app_data)
}

/// NTLM `MsvAvChannelBindings` value (MS-NLMP 2.2.2.1): MD5 of the serialized
/// `gss_channel_bindings_struct` around `app_data`.
pub fn ntlm_channel_binding_hash(app_data: &[u8]) -> [u8; 16] {
    Md5::digest(gss_channel_bindings(app_data)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_rfc_2744_vectors() {
        // Vector with addresses, as pyspnego's channel-binding tests pack it.
        let v = gss_channel_bindings_with_addresses(
            (2, &[1, 2, 3, 4]),
            (0, &[5, 6, 7, 8]),
            "café".as_bytes(),
        );
        assert_eq!(
            hex::encode(&v),
            "02000000040000000102030400000000040000000506070805000000636166c3a9"
        );
        // No bindings at all: five zero u32s.
        assert_eq!(gss_channel_bindings(&[]), vec![0u8; 20]);
        let app = tls_server_end_point_application_data(&[0xab; 32]);
        let s = gss_channel_bindings(&app);
        assert_eq!(&s[..16], &[0u8; 16]);
        assert_eq!(&s[16..20], &(21u32 + 32).to_le_bytes());
        assert_eq!(&s[20..41], b"tls-server-end-point:");
        assert_eq!(&s[41..], &[0xab; 32]);
        assert_eq!(
            ntlm_channel_binding_hash(&app),
            <[u8; 16]>::from(Md5::digest(&s))
        );
    }

    /// `SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID, params }, BIT STRING }`.
    fn fake_cert(oid: &[u8], params: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(params);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut c = vec![0x30, body.len() as u8];
        c.extend_from_slice(&body);
        c
    }

    #[test]
    fn hash_choice_follows_rfc_5929() {
        let rsa = |leaf: u8| fake_cert(&[PKCS1, &[leaf]].concat(), &[0x05, 0x00]);
        assert_eq!(certificate_hash(&rsa(4)), Ok(CertificateHash::Sha256)); // MD5 → SHA-256
        assert_eq!(certificate_hash(&rsa(5)), Ok(CertificateHash::Sha256)); // SHA-1 → SHA-256
        assert_eq!(certificate_hash(&rsa(11)), Ok(CertificateHash::Sha256));
        assert_eq!(certificate_hash(&rsa(12)), Ok(CertificateHash::Sha384));
        assert_eq!(certificate_hash(&rsa(13)), Ok(CertificateHash::Sha512));
        assert_eq!(certificate_hash(&rsa(14)), Ok(CertificateHash::Sha224));
        assert!(certificate_hash(&rsa(2)).is_err()); // md2WithRSA: not supported
        let ec = |leaf: u8| fake_cert(&[ECDSA_SHA2, &[leaf]].concat(), &[]);
        assert_eq!(certificate_hash(&ec(2)), Ok(CertificateHash::Sha256));
        assert_eq!(certificate_hash(&ec(3)), Ok(CertificateHash::Sha384));
        assert_eq!(certificate_hash(&ec(4)), Ok(CertificateHash::Sha512));
        assert_eq!(
            certificate_hash(&fake_cert(ECDSA_SHA1, &[])),
            Ok(CertificateHash::Sha256)
        );
        // Ed25519 (1.3.101.112): no hash defined.
        assert!(certificate_hash(&fake_cert(&[0x2b, 0x65, 0x70], &[])).is_err());
        // RSASSA-PSS: the hash named in its parameters; SHA-1 by default.
        let pss = [PKCS1, &[10]].concat();
        let sha384_alg = [
            &[0x30, 0x0d, 0x06, 0x09][..],
            NIST_HASH,
            &[0x02, 0x05, 0x00],
        ]
        .concat();
        let mut explicit = vec![
            0x30,
            (sha384_alg.len() + 2) as u8,
            0xa0,
            sha384_alg.len() as u8,
        ];
        explicit.extend_from_slice(&sha384_alg);
        assert_eq!(
            certificate_hash(&fake_cert(&pss, &explicit)),
            Ok(CertificateHash::Sha384)
        );
        assert_eq!(
            certificate_hash(&fake_cert(&pss, &[0x30, 0x00])),
            Ok(CertificateHash::Sha256)
        );
        // Garbage is an error, not a panic.
        for bad in [&[][..], &[0x30], &[0x30, 0x82, 0xff], &[0x02, 0x01, 0x00]] {
            assert!(certificate_hash(bad).is_err());
        }
    }

    #[test]
    fn end_point_of_a_sha1_rsa_certificate_is_its_sha256() {
        // Self-signed sha1WithRSAEncryption test certificate used by requests-ntlm's tests,
        // with the SHA-256 they expect (RFC 5929 upgrades SHA-1 to SHA-256).
        let der = hex::decode(concat!(
            "308203BC30820325A003020102020900C6C70409BC225BA0300D06092A864886F70D0101050500",
            "30819B310B3009060355040613024A50310E300C06035504081305546F6B796F3110300E060355",
            "040713074368756F2D6B753111300F060355040A13084672616E6B34444431183016060355040B",
            "130F5765624365727420537570706F7274311830160603550403130F4672616E6B344444205765",
            "622043413123302106092A864886F70D0109011614737570706F7274406672616E6B3464642E63",
            "6F6D301E170D3037313230373130323134365A170D3137313230343130323134365A30819B310B",
            "3009060355040613024A50310E300C06035504081305546F6B796F3110300E0603550407130743",
            "68756F2D6B753111300F060355040A13084672616E6B34444431183016060355040B130F576562",
            "4365727420537570706F7274311830160603550403130F4672616E6B3444442057656220434131",
            "23302106092A864886F70D0109011614737570706F7274406672616E6B3464642E636F6D30819F",
            "300D06092A864886F70D010101050003818D0030818902818100BBAFBC8F25D5E60CBDBFF8BDA2",
            "A20C50ACB30BFB5D04C0063D9494421C63EA489F227FBB5EAA75E016BE8C004882C1370BBE4E21",
            "D54C4BAC35E6C68A1E80D835CF1FCE3836DC73EF927C508699F9708FFC232E9611C0F82EC7BFD0",
            "220AD4AB3B23D87B5D44577E58F543E003AD63D827C6335716955ED739A0026FD414B74C7B0203",
            "010001A382010430820100301D0603551D0E0416041462F37BED06D4B1D59C7F48E5EFC5C91561",
            "FDD9113081D00603551D230481C83081C5801462F37BED06D4B1D59C7F48E5EFC5C91561FDD911",
            "A181A1A4819E30819B310B3009060355040613024A50310E300C06035504081305546F6B796F31",
            "10300E060355040713074368756F2D6B753111300F060355040A13084672616E6B344444311830",
            "16060355040B130F5765624365727420537570706F7274311830160603550403130F4672616E6B",
            "344444205765622043413123302106092A864886F70D0109011614737570706F7274406672616E",
            "6B3464642E636F6D820900C6C70409BC225BA0300C0603551D13040530030101FF300D06092A86",
            "4886F70D010105050003818100BA2C2E91DDB85398DF4C0A4B6590DF64734608746563652D7587",
            "910626CD31CDA24C182F2D3019F22ACC3D68BCB3230EE3CC0B73019903E0F3385DF81636B20461",
            "81D1019985938B0EF57992CB988FDE7506EED73EAB39725BF047A0B9B24D9184DCBB1B0A2E28C8",
            "7C90E72B69E8A8FB74DE9B8912C071A2C375E173C484810E0A",
        ))
        .unwrap();
        assert_eq!(
            hex::encode_upper(tls_server_end_point(&der).unwrap()),
            "AFED3DEC06DA16D94856C6EC6863B2D9D514395E7EAB446B69167C2D7E240908"
        );
    }

    fn rcgen_cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        rcgen::CertificateParams::new(vec!["host.contoso.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn end_point_of_rsa_sha256_and_ecdsa_certificates() {
        let rsa = rcgen_cert(&rcgen::PKCS_RSA_SHA256);
        assert_eq!(certificate_hash(&rsa), Ok(CertificateHash::Sha256));
        let ep = tls_server_end_point(&rsa).unwrap();
        assert_eq!(ep, sha2::Sha256::digest(&rsa).to_vec());

        let p256 = rcgen_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256).unwrap(),
            sha2::Sha256::digest(&p256).to_vec()
        );
        // ECDSA P-384 signs with SHA-384, which RFC 5929 keeps.
        let p384 = rcgen_cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        let ep384 = tls_server_end_point(&p384).unwrap();
        assert_eq!(ep384.len(), 48);
        assert_eq!(ep384, sha2::Sha384::digest(&p384).to_vec());

        let app = application_data(&p384).unwrap();
        assert_eq!(&app[..21], TLS_SERVER_END_POINT_PREFIX);
        assert_eq!(&app[21..], &ep384[..]);
        assert_ne!(
            ntlm_channel_binding_hash(&app),
            ntlm_channel_binding_hash(&application_data(&p256).unwrap())
        );
    }
}
