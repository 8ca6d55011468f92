//! The emulated host's NTLM acceptor (MS-NLMP server side): the CHALLENGE it sends, and the
//! check of an AUTHENTICATE — the NTLMv2 proof, then the MIC when the client says it sent one
//! (`MsvAvFlags` bit 0x2, as current Windows clients and pyspnego do). Only the emulator uses
//! it; the client side is `crate::providers::winrm::ntlm`.

use crate::providers::winrm::ntlm::{
    AUTH_MIC_AT, AUTH_PAYLOAD_AT, AV_CHANNEL_BINDINGS, AV_FLAG_MIC_PRESENT, CLIENT_FLAGS, SIG,
    VERSION, av_flags, av_get, fields, from_utf16le, hmac_md5, mic, msg_type, ntowf_v2,
    read_fields, split_user, utf16le,
};

const TARGET_TYPE_SERVER: u32 = 0x0002_0000;

/// The CHALLENGE for a NEGOTIATE: the client flags plus "target type server", the server
/// challenge, the VERSION of Windows Server 2022, the target name and `target_info`.
pub fn challenge_message(server_challenge: [u8; 8], target_info: &[u8], target: &str) -> Vec<u8> {
    let t = utf16le(target);
    let flags = CLIENT_FLAGS | TARGET_TYPE_SERVER;
    let base = 56;
    let mut m = Vec::with_capacity(base + t.len() + target_info.len());
    m.extend_from_slice(SIG);
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&fields(t.len(), base));
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(&fields(target_info.len(), base + t.len()));
    m.extend_from_slice(&VERSION);
    m.extend_from_slice(&t);
    m.extend_from_slice(target_info);
    m
}

/// Whether a message is a NEGOTIATE (type 1).
pub fn is_negotiate(msg: &[u8]) -> bool {
    msg_type(msg) == Some(1)
}

/// The `MsvAvChannelBindings` value an AUTHENTICATE's NTLMv2 response carries. Absent,
/// malformed and all-zero values (MS-NLMP: "no channel bindings") are `None`. Only meaningful
/// once [`verify_authenticate`] accepted the message: the NTProofStr covers these AV pairs.
pub fn channel_binding_of(msg: &[u8]) -> Option<[u8; 16]> {
    if msg_type(msg) != Some(3) {
        return None;
    }
    let v: [u8; 16] = av_get(client_av_pairs(msg)?, AV_CHANNEL_BINDINGS)?
        .try_into()
        .ok()?;
    (v != [0u8; 16]).then_some(v)
}

/// The AV pairs of an AUTHENTICATE's NTLMv2 response: after the NTProofStr (16) and
/// RespType..ChallengeFromClient..Reserved3 (28).
fn client_av_pairs(msg: &[u8]) -> Option<&[u8]> {
    read_fields(msg, 20)?.get(16 + 28..)
}

/// The MIC field of an AUTHENTICATE, when its layout has room for one (the payload starts
/// after the VERSION and MIC fields).
fn mic_of(msg: &[u8]) -> Option<[u8; 16]> {
    let payload_at = [12usize, 20, 28, 36, 44, 52]
        .into_iter()
        .filter_map(|at| {
            let len = u16::from_le_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
            let off = u32::from_le_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?);
            (len > 0).then_some(off as usize)
        })
        .min()?;
    if payload_at < AUTH_PAYLOAD_AT {
        return None;
    }
    msg.get(AUTH_MIC_AT..AUTH_PAYLOAD_AT)?.try_into().ok()
}

/// Checks an AUTHENTICATE against the expected account, given the NEGOTIATE and CHALLENGE
/// messages of the same exchange. `user` may be `DOMAIN\user`; the user part is compared
/// case-insensitively, the domain is not checked. When the client's `MsvAvFlags` say a MIC is
/// present, the MIC must be there and match (MS-NLMP 3.2.5.1.2); without that flag (older
/// clients) no MIC is required.
pub fn verify_authenticate(
    msg: &[u8],
    negotiate: &[u8],
    challenge: &[u8],
    user: &str,
    password: &str,
) -> bool {
    if msg_type(msg) != Some(3) || msg_type(challenge) != Some(2) {
        return false;
    }
    let (Some(nt), Some(dom), Some(usr), Some(server_challenge)) = (
        read_fields(msg, 20),
        read_fields(msg, 28),
        read_fields(msg, 36),
        challenge.get(24..32),
    ) else {
        return false;
    };
    if nt.len() < 16 + 28 {
        return false;
    }
    let got_user = from_utf16le(usr);
    let got_domain = from_utf16le(dom);
    let (want_user, _) = split_user(user);
    if !got_user.eq_ignore_ascii_case(&want_user) {
        return false;
    }
    let key = ntowf_v2(password, &got_user, &got_domain);
    let proof = hmac_md5(&key, &[server_challenge, &nt[16..]]);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&proof[..], &nt[..16])) {
        return false;
    }
    if av_flags(&nt[16 + 28..]) & AV_FLAG_MIC_PRESENT == 0 {
        return true;
    }
    let Some(sent) = mic_of(msg) else {
        return false;
    };
    // The CHALLENGE offers no key exchange (`NEGOTIATE_KEY_EXCH`), so the exported session
    // key is KXKEY, which for NTLMv2 is the session base key (MS-NLMP 3.3.2).
    let session_key = hmac_md5(&key, &[&proof]);
    let mut zeroed = msg.to_vec();
    zeroed[AUTH_MIC_AT..AUTH_PAYLOAD_AT].fill(0);
    let want = mic(&session_key, negotiate, challenge, &zeroed);
    subtle::ConstantTimeEq::ct_eq(&want[..], &sent[..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::winrm::ntlm::{
        AV_FLAGS, AV_NB_COMPUTER, AV_NB_DOMAIN, AV_TIMESTAMP, authenticate, av_list, av_pairs,
        filetime_now, negotiate, parse_challenge,
    };

    #[test]
    fn client_and_server_agree() {
        let info = av_pairs(&[
            (AV_NB_DOMAIN, utf16le("CONTOSO")),
            (AV_NB_COMPUTER, utf16le("HOST")),
            (AV_TIMESTAMP, filetime_now().to_le_bytes().to_vec()),
        ]);
        let sc = [1, 2, 3, 4, 5, 6, 7, 8];
        let chm = challenge_message(sc, &info, "HOST");
        let ch = parse_challenge(&chm).unwrap();
        assert_eq!(ch.server_challenge, sc);
        let neg = negotiate();
        let a = authenticate("svc", "CONTOSO", "pw", &ch, [9; 8], None);
        assert!(verify_authenticate(&a, &neg, &chm, "CONTOSO\\svc", "pw"));
        assert_eq!(channel_binding_of(&a), None);
        assert!(!verify_authenticate(
            &a,
            &neg,
            &chm,
            "CONTOSO\\svc",
            "other"
        ));
        let other = challenge_message([0; 8], &info, "HOST");
        assert!(!verify_authenticate(&a, &neg, &other, "CONTOSO\\svc", "pw"));
        assert!(!verify_authenticate(&a, &neg, &chm, "someone", "pw"));
        assert!(is_negotiate(&neg));
        assert!(parse_challenge(&neg).is_err());
        assert!(!verify_authenticate(
            b"NTLMSSP\0\x03\0\0\0",
            &neg,
            &chm,
            "svc",
            "pw"
        ));
    }

    #[test]
    fn channel_binding_rides_in_the_ntlmv2_response() {
        let info = av_pairs(&[
            (AV_NB_DOMAIN, utf16le("CONTOSO")),
            (AV_NB_COMPUTER, utf16le("HOST")),
            (AV_TIMESTAMP, filetime_now().to_le_bytes().to_vec()),
        ]);
        let sc = [7; 8];
        let chm = challenge_message(sc, &info, "HOST");
        let ch = parse_challenge(&chm).unwrap();
        let neg = negotiate();
        let cb = [0x5a; 16];
        let a = authenticate("svc", "CONTOSO", "pw", &ch, [1; 8], Some(&cb));
        assert!(verify_authenticate(&a, &neg, &chm, "svc", "pw"));
        assert_eq!(channel_binding_of(&a), Some(cb));
        // The server's pairs are kept, in order, before MsvAvFlags and the binding.
        let nt = read_fields(&a, 20).unwrap();
        let sent = av_list(&nt[44..]);
        let ids: Vec<u16> = sent.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            [
                AV_NB_DOMAIN,
                AV_NB_COMPUTER,
                AV_TIMESTAMP,
                AV_FLAGS,
                AV_CHANNEL_BINDINGS
            ]
        );
        // The NTProofStr covers the binding: swapping it breaks the proof.
        let pos = a
            .windows(16)
            .position(|w| w == cb)
            .expect("binding bytes in the message");
        let mut forged = a.clone();
        forged[pos..pos + 16].copy_from_slice(&[0x11; 16]);
        assert_eq!(channel_binding_of(&forged), Some([0x11; 16]));
        assert!(!verify_authenticate(&forged, &neg, &chm, "svc", "pw"));
        // All zeros means "no binding".
        let z = authenticate("svc", "CONTOSO", "pw", &ch, [1; 8], Some(&[0; 16]));
        assert_eq!(channel_binding_of(&z), None);
    }

    /// Our AUTHENTICATE carries VERSION, `MsvAvFlags` "MIC present" and a MIC that covers
    /// the three messages: changing the negotiated flags (not covered by the NTProofStr), the
    /// NEGOTIATE or the CHALLENGE seen by the client breaks it, and so does a zeroed MIC.
    #[test]
    fn mic_covers_the_flags_and_all_three_messages() {
        let info = av_pairs(&[
            (AV_NB_DOMAIN, utf16le("CONTOSO")),
            (AV_TIMESTAMP, filetime_now().to_le_bytes().to_vec()),
        ]);
        let chm = challenge_message([3; 8], &info, "HOST");
        let neg = negotiate();
        let a = authenticate(
            "svc",
            "CONTOSO",
            "pw",
            &parse_challenge(&chm).unwrap(),
            [2; 8],
            None,
        );
        assert_eq!(&a[64..72], &VERSION, "VERSION sent");
        assert_ne!(&a[AUTH_MIC_AT..AUTH_PAYLOAD_AT], &[0u8; 16], "MIC sent");
        let nt = read_fields(&a, 20).unwrap();
        assert_eq!(av_flags(&nt[44..]), AV_FLAG_MIC_PRESENT);
        assert!(verify_authenticate(&a, &neg, &chm, "svc", "pw"));
        let mut flags_changed = a.clone();
        flags_changed[60] ^= 0x04; // drop REQUEST_TARGET
        assert!(!verify_authenticate(
            &flags_changed,
            &neg,
            &chm,
            "svc",
            "pw"
        ));
        let mut other_neg = neg.clone();
        other_neg[12] ^= 0x04;
        assert!(!verify_authenticate(&a, &other_neg, &chm, "svc", "pw"));
        let mut other_ch = chm.clone();
        *other_ch.last_mut().unwrap() ^= 1;
        assert!(!verify_authenticate(&a, &neg, &other_ch, "svc", "pw"));
        let mut no_mic = a.clone();
        no_mic[AUTH_MIC_AT..AUTH_PAYLOAD_AT].fill(0);
        assert!(!verify_authenticate(&no_mic, &neg, &chm, "svc", "pw"));
        // The AV pair order: the server's, then MsvAvFlags.
        let ids: Vec<u16> = av_list(&nt[44..]).iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [AV_NB_DOMAIN, AV_TIMESTAMP, AV_FLAGS]);
    }
}
