//! The emulated host's Kerberos acceptor: acceptor credentials from a keytab and the
//! one-leg `gss_accept_sec_context` with channel bindings, over the GSS-API library that
//! `crate::providers::winrm::gssapi` loads (the client side stays there). Only the emulator
//! and its tests use it.

use crate::providers::winrm::gssapi::{
    BufferDesc, ChannelBindings, Cred, Credential, GSS_C_ACCEPT, GSS_C_CHANNEL_BOUND_FLAG,
    GSS_C_INDEFINITE, GSS_S_COMPLETE, GssError, KeyValueElement, KeyValueSet, Name, OmUint32,
    OwnedCtx, OwnedName, bindings, buffer_to_vec, failure, is_error, lib,
};
use std::ffi::CString;

/// Acceptor credentials for every key in a keytab file.
pub fn acceptor_from_keytab(keytab: &std::path::Path) -> Result<Credential, GssError> {
    let lib = lib()?;
    let key = CString::new("keytab").map_err(|e| GssError::Protocol(e.to_string()))?;
    let value = CString::new(keytab.to_string_lossy().as_bytes())
        .map_err(|e| GssError::Protocol(e.to_string()))?;
    let elements = [KeyValueElement {
        key: key.as_ptr(),
        value: value.as_ptr(),
    }];
    let store = KeyValueSet {
        count: 1,
        elements: elements.as_ptr(),
    };
    let mut minor = 0;
    let mut cred: Cred = std::ptr::null_mut();
    let mut lifetime: OmUint32 = 0;
    // SAFETY: no desired name (any key in the keytab), valid credential store.
    let major = unsafe {
        (lib.acquire_cred_from)(
            &mut minor,
            std::ptr::null_mut(),
            GSS_C_INDEFINITE,
            std::ptr::null(),
            GSS_C_ACCEPT,
            &store,
            &mut cred,
            std::ptr::null_mut(),
            &mut lifetime,
        )
    };
    Credential::acquired(lib, "gss_acquire_cred_from", major, minor, cred, lifetime)
}

/// What an acceptor learned from a complete context.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The client principal (`user@REALM`).
    pub client: String,
    /// The reply token (AP-REP) to send back for mutual authentication.
    pub reply: Vec<u8>,
    /// The initiator's channel bindings matched ours (MIT ≥ 1.19).
    pub channel_bound: bool,
}

/// Accepts a one-leg Kerberos context (the emulator's side).
pub fn accept(
    cred: &Credential,
    token: &[u8],
    app_data: Option<&[u8]>,
) -> Result<Accepted, GssError> {
    let lib = lib()?;
    let mut ctx = OwnedCtx(std::ptr::null_mut());
    let cb = bindings(app_data);
    let input = BufferDesc::borrowed(token);
    let mut src: Name = std::ptr::null_mut();
    let mut out = BufferDesc::empty();
    let mut ret_flags: OmUint32 = 0;
    let mut minor = 0;
    // SAFETY: valid credential, token and optional bindings; out-parameters.
    let major = unsafe {
        (lib.accept_sec_context)(
            &mut minor,
            &mut ctx.0,
            cred.cred,
            &input,
            cb.as_ref()
                .map_or(std::ptr::null(), |c| c as *const ChannelBindings),
            &mut src,
            std::ptr::null_mut(),
            &mut out,
            &mut ret_flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let reply = buffer_to_vec(lib, &mut out);
    let src = OwnedName(src);
    if is_error(major) {
        return Err(failure(lib, "gss_accept_sec_context", major, minor));
    }
    if major != GSS_S_COMPLETE {
        return Err(GssError::Protocol(
            "the Kerberos context needs more than one leg".into(),
        ));
    }
    let mut buf = BufferDesc::empty();
    let mut minor = 0;
    // SAFETY: `src` is the name the library returned; out buffer released by buffer_to_vec.
    let major = unsafe { (lib.display_name)(&mut minor, src.0, &mut buf, std::ptr::null_mut()) };
    if is_error(major) {
        return Err(failure(lib, "gss_display_name", major, minor));
    }
    let client = String::from_utf8_lossy(&buffer_to_vec(lib, &mut buf)).into_owned();
    Ok(Accepted {
        client,
        reply,
        channel_bound: ret_flags & GSS_C_CHANNEL_BOUND_FLAG != 0,
    })
}
