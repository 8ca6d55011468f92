//! NTLMv2 authentication messages (MS-NLMP) for WinRM over HTTPS: the client's NEGOTIATE and
//! AUTHENTICATE messages (the emulator's acceptor is in `crate::emulator::winrm`). No
//! signing/sealing: over HTTPS WinRM accepts unencrypted SOAP bodies. The AUTHENTICATE message
//! carries the TLS channel binding (`MsvAvChannelBindings`, see [`super::cbt`]) inside the
//! NTLMv2 response, where the NTProofStr covers it, so hosts with `CbtHardeningLevel=Strict`
//! accept it. As current Windows clients do, it also carries `MsvAvFlags` with "MIC present"
//! and the MIC (MS-NLMP 3.1.5.1.2): an HMAC-MD5, keyed with the exported session key, over the
//! NEGOTIATE, CHALLENGE and AUTHENTICATE messages, which protects the negotiated flags and the
//! messages against tampering.

use hmac::{Hmac, Mac};
use md5::Md5;

pub(crate) const SIG: &[u8; 8] = b"NTLMSSP\0";

pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const REQUEST_TARGET: u32 = 0x0000_0004;
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
pub const NEGOTIATE_128: u32 = 0x2000_0000;
pub const NEGOTIATE_56: u32 = 0x8000_0000;

pub(crate) const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// The VERSION structure (MS-NLMP 2.2.2.10) sent with `NEGOTIATE_VERSION`: Windows 10.0 build
/// 20348 (Server 2022), NTLM revision 15, as a current Windows client sends it.
pub(crate) const VERSION: [u8; 8] = [10, 0, 0x7C, 0x4F, 0, 0, 0, 0x0F];

/// Offsets in an AUTHENTICATE message: the MIC (after the 64-byte header and the VERSION) and
/// the payload.
pub(crate) const AUTH_MIC_AT: usize = 72;
pub(crate) const AUTH_PAYLOAD_AT: usize = 88;

/// AV pair ids (MS-NLMP 2.2.2.1).
pub const AV_EOL: u16 = 0;
pub const AV_NB_COMPUTER: u16 = 1;
pub const AV_NB_DOMAIN: u16 = 2;
pub const AV_FLAGS: u16 = 6;
pub const AV_TIMESTAMP: u16 = 7;
pub const AV_CHANNEL_BINDINGS: u16 = 0x000A;

/// `MsvAvFlags` bit: the AUTHENTICATE message carries a MIC (MS-NLMP 2.2.2.1).
pub const AV_FLAG_MIC_PRESENT: u32 = 0x0000_0002;

/// MD4 (RFC 1320), only for the NT hash.
pub fn md4(input: &[u8]) -> [u8; 16] {
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let (mut a, mut b, mut c, mut d) = (
        0x6745_2301u32,
        0xefcd_ab89u32,
        0x98ba_dcfeu32,
        0x1032_5476u32,
    );
    let f = |x: u32, y: u32, z: u32| (x & y) | (!x & z);
    let g = |x: u32, y: u32, z: u32| (x & y) | (x & z) | (y & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    for block in msg.chunks_exact(64) {
        let mut x = [0u32; 16];
        for (i, w) in x.iter_mut().enumerate() {
            *w = u32::from_le_bytes([
                block[i * 4],
                block[i * 4 + 1],
                block[i * 4 + 2],
                block[i * 4 + 3],
            ]);
        }
        let (aa, bb, cc, dd) = (a, b, c, d);
        for &i in &[0usize, 4, 8, 12] {
            a = a.wrapping_add(f(b, c, d)).wrapping_add(x[i]).rotate_left(3);
            d = d
                .wrapping_add(f(a, b, c))
                .wrapping_add(x[i + 1])
                .rotate_left(7);
            c = c
                .wrapping_add(f(d, a, b))
                .wrapping_add(x[i + 2])
                .rotate_left(11);
            b = b
                .wrapping_add(f(c, d, a))
                .wrapping_add(x[i + 3])
                .rotate_left(19);
        }
        for &i in &[0usize, 1, 2, 3] {
            let k = 0x5a82_7999u32;
            a = a
                .wrapping_add(g(b, c, d))
                .wrapping_add(x[i])
                .wrapping_add(k)
                .rotate_left(3);
            d = d
                .wrapping_add(g(a, b, c))
                .wrapping_add(x[i + 4])
                .wrapping_add(k)
                .rotate_left(5);
            c = c
                .wrapping_add(g(d, a, b))
                .wrapping_add(x[i + 8])
                .wrapping_add(k)
                .rotate_left(9);
            b = b
                .wrapping_add(g(c, d, a))
                .wrapping_add(x[i + 12])
                .wrapping_add(k)
                .rotate_left(13);
        }
        for &i in &[0usize, 2, 1, 3] {
            let k = 0x6ed9_eba1u32;
            a = a
                .wrapping_add(h(b, c, d))
                .wrapping_add(x[i])
                .wrapping_add(k)
                .rotate_left(3);
            d = d
                .wrapping_add(h(a, b, c))
                .wrapping_add(x[i + 8])
                .wrapping_add(k)
                .rotate_left(9);
            c = c
                .wrapping_add(h(d, a, b))
                .wrapping_add(x[i + 4])
                .wrapping_add(k)
                .rotate_left(11);
            b = b
                .wrapping_add(h(c, d, a))
                .wrapping_add(x[i + 12])
                .wrapping_add(k)
                .rotate_left(15);
        }
        a = a.wrapping_add(aa);
        b = b.wrapping_add(bb);
        c = c.wrapping_add(cc);
        d = d.wrapping_add(dd);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a.to_le_bytes());
    out[4..8].copy_from_slice(&b.to_le_bytes());
    out[8..12].copy_from_slice(&c.to_le_bytes());
    out[12..].copy_from_slice(&d.to_le_bytes());
    out
}

pub fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let mut m = match <Hmac<Md5> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 16],
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

pub fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

pub(crate) fn from_utf16le(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// NTOWFv2 (MS-NLMP 3.3.2).
pub fn ntowf_v2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt = md4(&utf16le(password));
    hmac_md5(&nt, &[&utf16le(&(user.to_uppercase() + domain))])
}

/// Splits a configured user into (user, domain): `DOMAIN\user`, or `user@realm` / `user` with an
/// empty domain (the host then uses its own).
pub fn split_user(name: &str) -> (String, String) {
    match name.split_once('\\') {
        Some((d, u)) => (u.to_string(), d.to_string()),
        None => (name.to_string(), String::new()),
    }
}

pub(crate) fn fields(len: usize, offset: usize) -> [u8; 8] {
    let mut f = [0u8; 8];
    f[..2].copy_from_slice(&(len as u16).to_le_bytes());
    f[2..4].copy_from_slice(&(len as u16).to_le_bytes());
    f[4..].copy_from_slice(&(offset as u32).to_le_bytes());
    f
}

pub(crate) fn read_fields(msg: &[u8], at: usize) -> Option<&[u8]> {
    let len = u16::from_le_bytes([*msg.get(at)?, *msg.get(at + 1)?]) as usize;
    let off = u32::from_le_bytes([
        *msg.get(at + 4)?,
        *msg.get(at + 5)?,
        *msg.get(at + 6)?,
        *msg.get(at + 7)?,
    ]) as usize;
    msg.get(off..off.checked_add(len)?)
}

pub(crate) fn msg_type(msg: &[u8]) -> Option<u32> {
    if msg.len() < 12 || &msg[..8] != SIG {
        return None;
    }
    Some(u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]))
}

/// NEGOTIATE_MESSAGE (type 1): flags, empty domain and workstation fields, VERSION. Always
/// the same bytes; [`authenticate`]'s MIC covers them.
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(SIG);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]);
    m.extend_from_slice(&VERSION);
    m
}

/// What a CHALLENGE_MESSAGE (type 2) carries.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    pub target_info: Vec<u8>,
    /// The message as received (the MIC covers it).
    pub raw: Vec<u8>,
}

pub fn parse_challenge(msg: &[u8]) -> Result<Challenge, String> {
    if msg_type(msg) != Some(2) || msg.len() < 48 {
        return Err("not an NTLM CHALLENGE message".into());
    }
    let flags = u32::from_le_bytes([msg[20], msg[21], msg[22], msg[23]]);
    let mut server_challenge = [0u8; 8];
    server_challenge.copy_from_slice(&msg[24..32]);
    let target_info = read_fields(msg, 40)
        .ok_or("CHALLENGE target info out of bounds")?
        .to_vec();
    Ok(Challenge {
        flags,
        server_challenge,
        target_info,
        raw: msg.to_vec(),
    })
}

/// The AV pairs before MsvAvEOL (or before the first malformed one).
pub(crate) fn av_list(info: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= info.len() {
        let aid = u16::from_le_bytes([info[i], info[i + 1]]);
        let len = u16::from_le_bytes([info[i + 2], info[i + 3]]) as usize;
        let Some(v) = info.get(i + 4..i + 4 + len) else {
            break;
        };
        if aid == AV_EOL {
            break;
        }
        out.push((aid, v));
        i += 4 + len;
    }
    out
}

pub(crate) fn av_get(info: &[u8], id: u16) -> Option<&[u8]> {
    av_list(info)
        .into_iter()
        .find(|(aid, _)| *aid == id)
        .map(|(_, v)| v)
}

/// `MsvAvFlags` of a target info (0 when absent or malformed).
pub(crate) fn av_flags(info: &[u8]) -> u32 {
    av_get(info, AV_FLAGS)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map_or(0, u32::from_le_bytes)
}

/// The target info the client puts into its NTLMv2 response: the server's AV pairs (MS-NLMP
/// 3.1.5.1.2), `MsvAvFlags` with "MIC present" (added to the server's flags, if any), then
/// `MsvAvChannelBindings` when a binding is given.
fn client_target_info(server_info: &[u8], channel_binding: Option<&[u8; 16]>) -> Vec<u8> {
    let mut pairs: Vec<(u16, Vec<u8>)> = av_list(server_info)
        .into_iter()
        .filter(|(id, _)| *id != AV_CHANNEL_BINDINGS && *id != AV_FLAGS)
        .map(|(id, v)| (id, v.to_vec()))
        .collect();
    let flags = av_flags(server_info) | AV_FLAG_MIC_PRESENT;
    pairs.push((AV_FLAGS, flags.to_le_bytes().to_vec()));
    if let Some(cb) = channel_binding {
        pairs.push((AV_CHANNEL_BINDINGS, cb.to_vec()));
    }
    av_pairs(&pairs)
}

/// Builds AV pairs ending with MsvAvEOL.
pub fn av_pairs(pairs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (id, val) in pairs {
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&(val.len() as u16).to_le_bytes());
        v.extend_from_slice(val);
    }
    v.extend_from_slice(&[0, 0, 0, 0]);
    v
}

/// Windows FILETIME (100 ns since 1601) of now.
pub fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() / 100)
        .unwrap_or(0) as u64;
    unix + 116_444_736_000_000_000
}

/// AUTHENTICATE_MESSAGE (type 3) with an NTLMv2 response, VERSION and MIC, answering `ch`
/// (which answered [`negotiate`]). `channel_binding` is the `MsvAvChannelBindings` value
/// ([`super::cbt::ntlm_channel_binding_hash`] of the TLS channel's application data); `None`
/// sends no binding.
pub fn authenticate(
    user: &str,
    domain: &str,
    password: &str,
    ch: &Challenge,
    client_challenge: [u8; 8],
    channel_binding: Option<&[u8; 16]>,
) -> Vec<u8> {
    let key = ntowf_v2(password, user, domain);
    let (timestamp, server_ts) = match av_get(&ch.target_info, AV_TIMESTAMP) {
        Some(t) if t.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(t);
            (b, true)
        }
        _ => (filetime_now().to_le_bytes(), false),
    };
    let mut temp = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
    temp.extend_from_slice(&timestamp);
    temp.extend_from_slice(&client_challenge);
    temp.extend_from_slice(&[0, 0, 0, 0]);
    temp.extend_from_slice(&client_target_info(&ch.target_info, channel_binding));
    temp.extend_from_slice(&[0, 0, 0, 0]);
    let proof = hmac_md5(&key, &[&ch.server_challenge, &temp]);
    let mut nt = proof.to_vec();
    nt.extend_from_slice(&temp);
    let lm: Vec<u8> = if server_ts {
        vec![0u8; 24]
    } else {
        let mut l = hmac_md5(&key, &[&ch.server_challenge, &client_challenge]).to_vec();
        l.extend_from_slice(&client_challenge);
        l
    };
    // No key exchange is negotiated: the exported session key is the session base key
    // (MS-NLMP 3.3.2, KXKEY for NTLMv2).
    let session_key = hmac_md5(&key, &[&proof]);
    let d = utf16le(domain);
    let u = utf16le(user);
    let w = utf16le("SESSIONGATE");
    let flags = CLIENT_FLAGS & (ch.flags | NEGOTIATE_UNICODE);
    let base = AUTH_PAYLOAD_AT;
    let mut m = Vec::with_capacity(base + d.len() + u.len() + w.len() + lm.len() + nt.len());
    m.extend_from_slice(SIG);
    m.extend_from_slice(&3u32.to_le_bytes());
    let off_d = base;
    let off_u = off_d + d.len();
    let off_w = off_u + u.len();
    let off_lm = off_w + w.len();
    let off_nt = off_lm + lm.len();
    let off_k = off_nt + nt.len();
    m.extend_from_slice(&fields(lm.len(), off_lm));
    m.extend_from_slice(&fields(nt.len(), off_nt));
    m.extend_from_slice(&fields(d.len(), off_d));
    m.extend_from_slice(&fields(u.len(), off_u));
    m.extend_from_slice(&fields(w.len(), off_w));
    m.extend_from_slice(&fields(0, off_k));
    m.extend_from_slice(&flags.to_le_bytes());
    // VERSION (zero when the server did not negotiate it), then the MIC, zero while computed.
    if flags & NEGOTIATE_VERSION != 0 {
        m.extend_from_slice(&VERSION);
    } else {
        m.extend_from_slice(&[0u8; 8]);
    }
    m.extend_from_slice(&[0u8; 16]);
    debug_assert_eq!(m.len(), base);
    m.extend_from_slice(&d);
    m.extend_from_slice(&u);
    m.extend_from_slice(&w);
    m.extend_from_slice(&lm);
    m.extend_from_slice(&nt);
    let mic = mic(&session_key, &negotiate(), &ch.raw, &m);
    m[AUTH_MIC_AT..AUTH_PAYLOAD_AT].copy_from_slice(&mic);
    m
}

/// The MIC (MS-NLMP 3.1.5.1.2): HMAC-MD5 keyed with the exported session key over the three
/// messages, the AUTHENTICATE one with its MIC field zeroed.
pub(crate) fn mic(
    session_key: &[u8; 16],
    negotiate: &[u8],
    challenge: &[u8],
    authenticate: &[u8],
) -> [u8; 16] {
    hmac_md5(session_key, &[negotiate, challenge, authenticate])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md4_vectors() {
        assert_eq!(hex::encode(md4(b"")), "31d6cfe0d16ae931b73c59d7e0c089c0");
        assert_eq!(hex::encode(md4(b"abc")), "a448017aaf21d8525fc10ae87aa6729d");
        assert_eq!(
            hex::encode(md4(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            )),
            "e33b4ddc9c38f2199c3e7b164fcc0536"
        );
    }

    #[test]
    fn ms_nlmp_ntlmv2_vectors() {
        // MS-NLMP 4.2.1 / 4.2.4: user "User", domain "Domain", password "Password".
        assert_eq!(
            hex::encode(md4(&utf16le("Password"))),
            "a4f49c406510bdcab6824ee7c30fd852"
        );
        assert_eq!(
            hex::encode(ntowf_v2("Password", "User", "Domain")),
            "0c868a403bfd7a93a3001ef22ef02e3f"
        );
    }
}
