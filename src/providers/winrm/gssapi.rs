//! Kerberos through the system's GSS-API library (MIT krb5's `libgssapi_krb5.so.2`),
//! loaded at run time with `dlopen` the first time a Kerberos pool or emulated host needs
//! it. Nothing links against krb5 at build time, so builds without Kerberos need no C
//! library; a host that uses `auth = "kerberos"` needs the `libgssapi-krb5-2` package (and
//! a `krb5.conf` that locates the KDC: `/etc/krb5.conf` or `KRB5_CONFIG`).
//!
//! Only the handful of RFC 2744 calls WinRM needs are bound: importing names, acquiring
//! credentials (with a password, MIT's `gss_acquire_cred_with_password`), the initiator's
//! context loop with channel bindings, and error texts. The emulator's acceptor
//! (`crate::emulator::winrm::gss_acceptor`: `gss_acquire_cred_from` with a keytab,
//! `gss_accept_sec_context`) uses the same loaded library and the `pub(crate)` items here.
//! Every call blocks (the initiator talks to the KDC), so async callers run them on the
//! blocking pool.

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) type OmUint32 = u32;

#[repr(C)]
pub(crate) struct BufferDesc {
    length: usize,
    value: *mut c_void,
}

impl BufferDesc {
    pub(crate) fn empty() -> Self {
        BufferDesc {
            length: 0,
            value: std::ptr::null_mut(),
        }
    }
    /// A borrowed view of `bytes` (GSS-API never writes through input buffers).
    pub(crate) fn borrowed(bytes: &[u8]) -> Self {
        BufferDesc {
            length: bytes.len(),
            value: bytes.as_ptr() as *mut c_void,
        }
    }
}

#[repr(C)]
pub(crate) struct OidDesc {
    length: OmUint32,
    elements: *mut c_void,
}

#[repr(C)]
pub(crate) struct ChannelBindings {
    initiator_addrtype: OmUint32,
    initiator_address: BufferDesc,
    acceptor_addrtype: OmUint32,
    acceptor_address: BufferDesc,
    application_data: BufferDesc,
}

#[repr(C)]
pub(crate) struct KeyValueElement {
    pub(crate) key: *const c_char,
    pub(crate) value: *const c_char,
}

#[repr(C)]
pub(crate) struct KeyValueSet {
    pub(crate) count: OmUint32,
    pub(crate) elements: *const KeyValueElement,
}

pub(crate) type Name = *mut c_void;
pub(crate) type Ctx = *mut c_void;
pub(crate) type Cred = *mut c_void;

pub(crate) const GSS_S_COMPLETE: OmUint32 = 0;
const GSS_S_CONTINUE_NEEDED: OmUint32 = 1;
const GSS_C_MUTUAL_FLAG: OmUint32 = 2;
const GSS_C_REPLAY_FLAG: OmUint32 = 4;
const GSS_C_SEQUENCE_FLAG: OmUint32 = 8;
const GSS_C_INTEG_FLAG: OmUint32 = 32;
/// MIT krb5 ≥ 1.19: the acceptor verified the initiator's channel bindings.
pub const GSS_C_CHANNEL_BOUND_FLAG: OmUint32 = 2048;
const GSS_C_INITIATE: c_int = 1;
pub(crate) const GSS_C_ACCEPT: c_int = 2;
const GSS_C_GSS_CODE: c_int = 1;
const GSS_C_MECH_CODE: c_int = 2;
pub(crate) const GSS_C_INDEFINITE: OmUint32 = 0xffff_ffff;
const GSS_C_AF_UNSPEC: OmUint32 = 0;

/// 1.2.840.113554.1.2.1.4 — `service@host` names.
const OID_NT_HOSTBASED_SERVICE: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x01, 0x04];
/// 1.2.840.113554.1.2.1.1 — user names (`user` or `user@REALM`).
const OID_NT_USER_NAME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x01, 0x01];
/// 1.2.840.113554.1.2.2.1 — Kerberos principal names (`HTTP/host@REALM`).
const OID_KRB5_PRINCIPAL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 0x01];
/// 1.2.840.113554.1.2.2 — the Kerberos V5 mechanism.
const OID_MECH_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];

type ImportName =
    unsafe extern "C" fn(*mut OmUint32, *const BufferDesc, *const OidDesc, *mut Name) -> OmUint32;
type ReleaseName = unsafe extern "C" fn(*mut OmUint32, *mut Name) -> OmUint32;
type ReleaseBuffer = unsafe extern "C" fn(*mut OmUint32, *mut BufferDesc) -> OmUint32;
type ReleaseCred = unsafe extern "C" fn(*mut OmUint32, *mut Cred) -> OmUint32;
type DeleteSecContext = unsafe extern "C" fn(*mut OmUint32, *mut Ctx, *mut BufferDesc) -> OmUint32;
type DisplayStatus = unsafe extern "C" fn(
    *mut OmUint32,
    OmUint32,
    c_int,
    *const OidDesc,
    *mut OmUint32,
    *mut BufferDesc,
) -> OmUint32;
type DisplayName =
    unsafe extern "C" fn(*mut OmUint32, Name, *mut BufferDesc, *mut *mut OidDesc) -> OmUint32;
type AcquireCredWithPassword = unsafe extern "C" fn(
    *mut OmUint32,
    Name,
    *const BufferDesc,
    OmUint32,
    *const c_void,
    c_int,
    *mut Cred,
    *mut *mut c_void,
    *mut OmUint32,
) -> OmUint32;
type AcquireCredFrom = unsafe extern "C" fn(
    *mut OmUint32,
    Name,
    OmUint32,
    *const c_void,
    c_int,
    *const KeyValueSet,
    *mut Cred,
    *mut *mut c_void,
    *mut OmUint32,
) -> OmUint32;
type InitSecContext = unsafe extern "C" fn(
    *mut OmUint32,
    Cred,
    *mut Ctx,
    Name,
    *const OidDesc,
    OmUint32,
    OmUint32,
    *const ChannelBindings,
    *const BufferDesc,
    *mut *mut OidDesc,
    *mut BufferDesc,
    *mut OmUint32,
    *mut OmUint32,
) -> OmUint32;
type AcceptSecContext = unsafe extern "C" fn(
    *mut OmUint32,
    *mut Ctx,
    Cred,
    *const BufferDesc,
    *const ChannelBindings,
    *mut Name,
    *mut *mut OidDesc,
    *mut BufferDesc,
    *mut OmUint32,
    *mut OmUint32,
    *mut Cred,
) -> OmUint32;

/// The bound entry points of the loaded library.
pub(crate) struct Lib {
    import_name: ImportName,
    release_name: ReleaseName,
    release_buffer: ReleaseBuffer,
    release_cred: ReleaseCred,
    delete_sec_context: DeleteSecContext,
    display_status: DisplayStatus,
    pub(crate) display_name: DisplayName,
    acquire_cred_with_password: AcquireCredWithPassword,
    pub(crate) acquire_cred_from: AcquireCredFrom,
    init_sec_context: InitSecContext,
    pub(crate) accept_sec_context: AcceptSecContext,
}

/// Library file names tried, in order.
const LIBRARIES: &[&str] = &["libgssapi_krb5.so.2", "libgssapi_krb5.so"];

fn load() -> Result<Lib, String> {
    let mut handle = std::ptr::null_mut();
    for name in LIBRARIES {
        let c = CString::new(*name).map_err(|e| e.to_string())?;
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is never closed, so
        // the symbols below stay valid for the life of the process.
        handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            break;
        }
    }
    if handle.is_null() {
        return Err(format!(
            "cannot load the GSS-API library ({}); install MIT Kerberos' libgssapi-krb5-2",
            LIBRARIES.join(" or ")
        ));
    }
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            let c = CString::new($name).map_err(|e| e.to_string())?;
            // SAFETY: dlsym on a live handle with a NUL-terminated name.
            let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
            if p.is_null() {
                return Err(format!(
                    "the GSS-API library has no `{}` (MIT krb5 1.14 or later is needed)",
                    $name
                ));
            }
            // SAFETY: the symbol is the RFC 2744 / MIT function whose C signature the target
            // type spells out.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        }};
    }
    Ok(Lib {
        import_name: sym!("gss_import_name", ImportName),
        release_name: sym!("gss_release_name", ReleaseName),
        release_buffer: sym!("gss_release_buffer", ReleaseBuffer),
        release_cred: sym!("gss_release_cred", ReleaseCred),
        delete_sec_context: sym!("gss_delete_sec_context", DeleteSecContext),
        display_status: sym!("gss_display_status", DisplayStatus),
        display_name: sym!("gss_display_name", DisplayName),
        acquire_cred_with_password: sym!("gss_acquire_cred_with_password", AcquireCredWithPassword),
        acquire_cred_from: sym!("gss_acquire_cred_from", AcquireCredFrom),
        init_sec_context: sym!("gss_init_sec_context", InitSecContext),
        accept_sec_context: sym!("gss_accept_sec_context", AcceptSecContext),
    })
}

pub(crate) fn lib() -> Result<&'static Lib, GssError> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load)
        .as_ref()
        .map_err(|e| GssError::Unavailable(e.clone()))
}

/// Checks that the library can be loaded (config check, start-up).
pub fn available() -> Result<(), String> {
    lib().map(|_| ()).map_err(|e| e.to_string())
}

/// A GSS-API failure, with the library's own texts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GssError {
    #[error("{0}")]
    Unavailable(String),
    /// A call failed: which one, the major/minor texts.
    #[error("{call}: {message}")]
    Failed {
        call: &'static str,
        major: u32,
        /// The mechanism's status (for Kerberos, a `krb5` error code as unsigned).
        minor: u32,
        message: String,
    },
    #[error("{0}")]
    Protocol(String),
}

/// MIT `krb5` error codes (com_err table `krb5`, base -1765328384) we classify by; codes,
/// not texts, because MIT's messages are translated.
mod krb5_codes {
    const BASE: i32 = -1_765_328_384;
    pub const C_PRINCIPAL_UNKNOWN: i32 = BASE + 6;
    pub const CLIENT_REVOKED: i32 = BASE + 18;
    pub const KEY_EXPIRED: i32 = BASE + 23;
    pub const PREAUTH_FAILED: i32 = BASE + 24;
    pub const BAD_INTEGRITY: i32 = BASE + 31;
    pub const TKT_EXPIRED: i32 = BASE + 32;
}

impl GssError {
    fn minor_code(&self) -> Option<i32> {
        match self {
            GssError::Failed { minor, .. } => Some(*minor as i32),
            _ => None,
        }
    }

    /// Whether the failure says our tickets expired (worth one fresh acquisition).
    pub fn is_expired(&self) -> bool {
        match self {
            // GSS_S_CREDENTIALS_EXPIRED is routine error 11.
            GssError::Failed { major, .. } => {
                (major >> 16) & 0xff == 11 || self.minor_code() == Some(krb5_codes::TKT_EXPIRED)
            }
            _ => false,
        }
    }

    /// Whether the KDC refused the principal or its password (unknown, revoked or expired
    /// account; wrong password), as opposed to an unreachable KDC or any other failure.
    pub fn is_credentials(&self) -> bool {
        use krb5_codes::*;
        matches!(
            self.minor_code(),
            Some(
                C_PRINCIPAL_UNKNOWN | CLIENT_REVOKED | KEY_EXPIRED | PREAUTH_FAILED | BAD_INTEGRITY
            )
        )
    }
}

pub(crate) fn buffer_to_vec(lib: &Lib, buf: &mut BufferDesc) -> Vec<u8> {
    let out = if buf.value.is_null() || buf.length == 0 {
        Vec::new()
    } else {
        // SAFETY: the library filled `buf` with `length` readable bytes.
        unsafe { std::slice::from_raw_parts(buf.value as *const u8, buf.length) }.to_vec()
    };
    let mut minor = 0;
    // SAFETY: releasing a buffer the library allocated (or an empty one).
    unsafe { (lib.release_buffer)(&mut minor, buf) };
    out
}

fn status_text(lib: &Lib, code: OmUint32, kind: c_int) -> String {
    let mut parts = Vec::new();
    let mut ctx: OmUint32 = 0;
    for _ in 0..8 {
        let mut minor = 0;
        let mut buf = BufferDesc::empty();
        // SAFETY: out-parameters are valid; mech NULL means the default mechanism.
        let major = unsafe {
            (lib.display_status)(&mut minor, code, kind, std::ptr::null(), &mut ctx, &mut buf)
        };
        if major != GSS_S_COMPLETE {
            break;
        }
        let text = String::from_utf8_lossy(&buffer_to_vec(lib, &mut buf)).into_owned();
        if !text.is_empty() {
            parts.push(text);
        }
        if ctx == 0 {
            break;
        }
    }
    parts.join("; ")
}

pub(crate) fn failure(lib: &Lib, call: &'static str, major: OmUint32, minor: OmUint32) -> GssError {
    let mut message = status_text(lib, major, GSS_C_GSS_CODE);
    if minor != 0 {
        let m = status_text(lib, minor, GSS_C_MECH_CODE);
        if !m.is_empty() {
            message = format!("{message} ({m})");
        }
    }
    GssError::Failed {
        call,
        major,
        minor,
        message,
    }
}

pub(crate) fn is_error(major: OmUint32) -> bool {
    major & 0xffff_0000 != 0
}

/// An imported name, released on drop.
pub(crate) struct OwnedName(pub(crate) Name);

impl Drop for OwnedName {
    fn drop(&mut self) {
        if let Ok(lib) = lib()
            && !self.0.is_null()
        {
            let mut minor = 0;
            // SAFETY: releasing a name we imported.
            unsafe { (lib.release_name)(&mut minor, &mut self.0) };
        }
    }
}

fn import_name(text: &str, oid: &[u8]) -> Result<OwnedName, GssError> {
    let lib = lib()?;
    let buf = BufferDesc::borrowed(text.as_bytes());
    let oid = OidDesc {
        length: oid.len() as OmUint32,
        elements: oid.as_ptr() as *mut c_void,
    };
    let mut minor = 0;
    let mut name: Name = std::ptr::null_mut();
    // SAFETY: valid input buffer and OID, out-parameter for the name.
    let major = unsafe { (lib.import_name)(&mut minor, &buf, &oid, &mut name) };
    if is_error(major) {
        return Err(failure(lib, "gss_import_name", major, minor));
    }
    Ok(OwnedName(name))
}

/// Imports a service principal: `HTTP/host@REALM` (a Kerberos principal name) or
/// `HTTP/host` / `HTTP@host` (a host-based service name, realm from `krb5.conf`).
fn import_service(spn: &str) -> Result<OwnedName, GssError> {
    if spn.contains('/') && spn.contains('@') {
        import_name(spn, OID_KRB5_PRINCIPAL)
    } else {
        import_name(&spn.replacen('/', "@", 1), OID_NT_HOSTBASED_SERVICE)
    }
}

/// Credential handle, released on drop.
pub struct Credential {
    pub(crate) cred: Cred,
    /// Seconds of validity the library reported at acquisition.
    lifetime: u32,
    acquired: std::time::Instant,
}

// SAFETY: MIT krb5 credential handles may be used from any thread; we serialise their use
// per context (each context is driven by one task at a time).
unsafe impl Send for Credential {}
unsafe impl Sync for Credential {}

impl Drop for Credential {
    fn drop(&mut self) {
        if let Ok(lib) = lib()
            && !self.cred.is_null()
        {
            let mut minor = 0;
            // SAFETY: releasing a credential we acquired.
            unsafe { (lib.release_cred)(&mut minor, &mut self.cred) };
        }
    }
}

impl Credential {
    /// The result of one `gss_acquire_cred*` call.
    pub(crate) fn acquired(
        lib: &Lib,
        call: &'static str,
        major: OmUint32,
        minor: OmUint32,
        cred: Cred,
        lifetime: OmUint32,
    ) -> Result<Self, GssError> {
        if is_error(major) {
            return Err(failure(lib, call, major, minor));
        }
        Ok(Credential {
            cred,
            lifetime,
            acquired: std::time::Instant::now(),
        })
    }

    /// Initiator credentials from a principal and password (an AS exchange with the KDC;
    /// the tickets stay in memory, no credential cache on disk).
    pub fn with_password(principal: &str, password: &str) -> Result<Self, GssError> {
        let lib = lib()?;
        let name = import_name(principal, OID_NT_USER_NAME)?;
        let pw = BufferDesc::borrowed(password.as_bytes());
        let mut minor = 0;
        let mut cred: Cred = std::ptr::null_mut();
        let mut lifetime: OmUint32 = 0;
        // SAFETY: valid name and password buffer; default mechanisms; out-parameters.
        let major = unsafe {
            (lib.acquire_cred_with_password)(
                &mut minor,
                name.0,
                &pw,
                GSS_C_INDEFINITE,
                std::ptr::null(),
                GSS_C_INITIATE,
                &mut cred,
                std::ptr::null_mut(),
                &mut lifetime,
            )
        };
        Credential::acquired(
            lib,
            "gss_acquire_cred_with_password",
            major,
            minor,
            cred,
            lifetime,
        )
    }

    /// Whether the tickets behind this credential are still valid for `margin` more.
    pub fn fresh_for(&self, margin: std::time::Duration) -> bool {
        if self.lifetime == GSS_C_INDEFINITE {
            return true;
        }
        let left = std::time::Duration::from_secs(u64::from(self.lifetime))
            .saturating_sub(self.acquired.elapsed());
        left > margin
    }
}

/// A security context, deleted on drop.
pub(crate) struct OwnedCtx(pub(crate) Ctx);

impl Drop for OwnedCtx {
    fn drop(&mut self) {
        if let Ok(lib) = lib()
            && !self.0.is_null()
        {
            let mut minor = 0;
            // SAFETY: deleting a context we created; no output token wanted.
            unsafe { (lib.delete_sec_context)(&mut minor, &mut self.0, std::ptr::null_mut()) };
        }
    }
}

pub(crate) fn bindings(app_data: Option<&[u8]>) -> Option<ChannelBindings> {
    app_data.map(|d| ChannelBindings {
        initiator_addrtype: GSS_C_AF_UNSPEC,
        initiator_address: BufferDesc::empty(),
        acceptor_addrtype: GSS_C_AF_UNSPEC,
        acceptor_address: BufferDesc::empty(),
        application_data: BufferDesc::borrowed(d),
    })
}

/// The initiator side of one Kerberos context (one authenticated HTTP connection).
pub struct Initiator {
    ctx: OwnedCtx,
    target: OwnedName,
    cred: Arc<Credential>,
    app_data: Option<Vec<u8>>,
    complete: bool,
}

// SAFETY: a context is used by one thread at a time (it is moved into blocking tasks).
unsafe impl Send for Initiator {}

impl Initiator {
    /// Starts a context for `spn` and returns it with the first token (the AP-REQ).
    /// `app_data` is the channel-binding application data (`tls-server-end-point:` + hash).
    pub fn start(
        cred: Arc<Credential>,
        spn: &str,
        app_data: Option<Vec<u8>>,
    ) -> Result<(Self, Vec<u8>), GssError> {
        let target = import_service(spn)?;
        let mut me = Initiator {
            ctx: OwnedCtx(std::ptr::null_mut()),
            target,
            cred,
            app_data,
            complete: false,
        };
        let token = me.step(None)?;
        if token.is_empty() {
            return Err(GssError::Protocol(
                "GSS-API produced no initial token".into(),
            ));
        }
        Ok((me, token))
    }

    fn step(&mut self, input: Option<&[u8]>) -> Result<Vec<u8>, GssError> {
        let lib = lib()?;
        let cb = bindings(self.app_data.as_deref());
        let input = input.map(BufferDesc::borrowed);
        let mech = OidDesc {
            length: OID_MECH_KRB5.len() as OmUint32,
            elements: OID_MECH_KRB5.as_ptr() as *mut c_void,
        };
        let mut out = BufferDesc::empty();
        let mut ret_flags: OmUint32 = 0;
        let mut minor = 0;
        // SAFETY: every pointer is valid for the call; the context handle is ours.
        let major = unsafe {
            (lib.init_sec_context)(
                &mut minor,
                self.cred.cred,
                &mut self.ctx.0,
                self.target.0,
                &mech,
                GSS_C_MUTUAL_FLAG | GSS_C_REPLAY_FLAG | GSS_C_SEQUENCE_FLAG | GSS_C_INTEG_FLAG,
                GSS_C_INDEFINITE,
                cb.as_ref()
                    .map_or(std::ptr::null(), |c| c as *const ChannelBindings),
                input
                    .as_ref()
                    .map_or(std::ptr::null(), |b| b as *const BufferDesc),
                std::ptr::null_mut(),
                &mut out,
                &mut ret_flags,
                std::ptr::null_mut(),
            )
        };
        let token = buffer_to_vec(lib, &mut out);
        if is_error(major) {
            return Err(failure(lib, "gss_init_sec_context", major, minor));
        }
        self.complete = major == GSS_S_COMPLETE;
        if major != GSS_S_COMPLETE && major != GSS_S_CONTINUE_NEEDED {
            return Err(failure(lib, "gss_init_sec_context", major, minor));
        }
        Ok(token)
    }

    /// Feeds the acceptor's answer (the AP-REP of mutual authentication); the context must
    /// then be complete, which proves the host holds the service key.
    pub fn finish(&mut self, reply: &[u8]) -> Result<(), GssError> {
        let more = self.step(Some(reply))?;
        if !self.complete || !more.is_empty() {
            return Err(GssError::Protocol(
                "mutual authentication did not complete after the host's reply".into(),
            ));
        }
        Ok(())
    }
}

/// Initiator credentials shared by every connection of one pool, re-acquired when their
/// tickets near expiry or after the KDC refused them.
pub struct CredentialCache {
    principal: String,
    password: secrecy::SecretString,
    current: Mutex<Option<Arc<Credential>>>,
}

impl CredentialCache {
    pub fn new(principal: String, password: secrecy::SecretString) -> Self {
        CredentialCache {
            principal,
            password,
            current: Mutex::new(None),
        }
    }

    /// The cached credential, or a new one (blocking: may talk to the KDC).
    pub fn get(&self) -> Result<Arc<Credential>, GssError> {
        use secrecy::ExposeSecret;
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cur.as_ref()
            && c.fresh_for(std::time::Duration::from_secs(300))
        {
            return Ok(c.clone());
        }
        let c = Arc::new(Credential::with_password(
            &self.principal,
            self.password.expose_secret(),
        )?);
        *cur = Some(c.clone());
        Ok(c)
    }

    /// Forgets the cached credential (after a refusal), so the next `get` re-acquires.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
