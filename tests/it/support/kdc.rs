//! A real MIT Kerberos KDC for tests: a throw-away realm in a temporary directory
//! (`kdb5_util`, `kadmin.local`), `krb5kdc` in the foreground on a free loopback port, and a
//! `krb5.conf` that points at it. Needs Debian's `krb5-kdc` and `krb5-admin-server`
//! (`scripts/test` installs them); without them the tests fail naming the install command
//! (see `super::prereq`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REALM: &str = "CONTOSO.TEST";

pub struct Kdc {
    pub dir: tempfile::TempDir,
    pub krb5_conf: PathBuf,
    child: Child,
}

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sbin(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Whether the KDC tools and the GSS-API library are here. Their absence fails the test
/// naming the install command (a loud skip only with `SESSIONGATE_SKIP_MISSING=1`).
pub fn available(test: &str) -> bool {
    let missing: Vec<&str> = ["krb5kdc", "kdb5_util", "kadmin.local"]
        .into_iter()
        .filter(|t| sbin(t).is_none())
        .collect();
    let lib = sessiongate::providers::winrm::gssapi::available();
    if missing.is_empty() && lib.is_ok() {
        return true;
    }
    super::prereq::missing(
        test,
        &format!(
            "MIT Kerberos KDC tools (missing: {missing:?}) or the GSS-API library ({:?})",
            lib.err()
        ),
        "apt-get install krb5-kdc krb5-admin-server libgssapi-krb5-2",
    );
    false
}

impl Kdc {
    /// Creates the realm and starts the KDC. Sets `KRB5_CONFIG` for this process (call it
    /// before any runtime thread starts).
    pub fn start() -> Kdc {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = super::free_port();
        let krb5_conf = d.join("krb5.conf");
        std::fs::write(
            &krb5_conf,
            format!(
                "[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n \
                 dns_lookup_realm = false\n dns_canonicalize_hostname = false\n rdns = false\n \
                 udp_preference_limit = 1\n ticket_lifetime = 1h\n\
                 [realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n\
                 [domain_realm]\n .contoso.test = {REALM}\n contoso.test = {REALM}\n"
            ),
        )
        .unwrap();
        let kdc_conf = d.join("kdc.conf");
        std::fs::write(
            &kdc_conf,
            format!(
                "[kdcdefaults]\n kdc_listen = 127.0.0.1:{port}\n kdc_tcp_listen = 127.0.0.1:{port}\n\
                 [realms]\n {REALM} = {{\n  database_name = {db}\n  key_stash_file = {stash}\n  \
                 acl_file = {acl}\n  max_life = 1h\n  \
                 supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n }}\n\
                 [logging]\n kdc = FILE:{log}\n",
                db = d.join("principal").display(),
                stash = d.join("stash").display(),
                acl = d.join("kadm5.acl").display(),
                log = d.join("kdc.log").display(),
            ),
        )
        .unwrap();
        std::fs::write(d.join("kadm5.acl"), "").unwrap();
        let env = [
            ("KRB5_CONFIG", krb5_conf.clone()),
            ("KRB5_KDC_PROFILE", kdc_conf.clone()),
        ];
        let run = |tool: &str, args: &[&str]| {
            let out = Command::new(sbin(tool).unwrap())
                .args(args)
                .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            "kdb5_util",
            &["-r", REALM, "create", "-s", "-P", "master-Passw0rd"],
        );
        let child = Command::new(sbin("krb5kdc").unwrap())
            .args(["-n", "-r", REALM])
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "krb5kdc did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: set before the test starts any runtime or other thread.
        unsafe {
            std::env::set_var("KRB5_CONFIG", &krb5_conf);
            // No replay cache file outside the test's directory.
            std::env::set_var("KRB5RCACHENAME", "none:");
        }
        Kdc {
            dir,
            krb5_conf,
            child,
        }
    }

    /// Stops the KDC (tests of an unreachable KDC).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs one `kadmin.local` request against the realm.
    pub fn kadmin(&self, query: &[&str]) {
        self.kadmin_script(&[query.join(" ")]);
    }

    /// Tickets the KDC issued so far: (AS exchanges, TGS exchanges), from its log.
    pub fn issued(&self) -> (usize, usize) {
        let log = std::fs::read_to_string(self.dir.path().join("kdc.log")).unwrap_or_default();
        let count = |kind: &str| {
            log.lines()
                .filter(|l| l.contains(kind) && l.contains("ISSUE"))
                .count()
        };
        (count("AS_REQ"), count("TGS_REQ"))
    }

    /// A user principal with a password.
    pub fn add_user(&self, name: &str, password: &str) {
        self.kadmin(&["addprinc", "-pw", password, &format!("{name}@{REALM}")]);
    }

    /// Runs several `kadmin.local` requests in one process (read from its stdin).
    pub fn kadmin_script(&self, lines: &[String]) {
        use std::io::Write;
        let mut child = Command::new(sbin("kadmin.local").unwrap())
            .args(["-r", REALM])
            .env("KRB5_CONFIG", &self.krb5_conf)
            .env("KRB5_KDC_PROFILE", self.dir.path().join("kdc.conf"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut stdin = child.stdin.take().unwrap();
            for l in lines {
                writeln!(stdin, "{l}").unwrap();
            }
            writeln!(stdin, "quit").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("error") && !text.contains("Error"),
            "kadmin.local script: {text}"
        );
    }

    /// `HTTP/<host>` service principals with random keys, exported to a new keytab file.
    pub fn add_services(&self, hosts: &[String], keytab_name: &str) -> PathBuf {
        let kt = self.dir.path().join(keytab_name);
        let mut lines = Vec::new();
        for h in hosts {
            let p = format!("HTTP/{h}@{REALM}");
            lines.push(format!("addprinc -randkey {p}"));
            lines.push(format!("ktadd -k {} {p}", kt.display()));
        }
        self.kadmin_script(&lines);
        kt
    }

    /// Gives the services new random keys (a new kvno), written to another keytab; keytabs
    /// exported earlier then hold keys the KDC no longer uses.
    pub fn rekey_services(&self, hosts: &[String], keytab_name: &str) -> PathBuf {
        let kt = self.dir.path().join(keytab_name);
        let lines: Vec<String> = hosts
            .iter()
            .map(|h| format!("ktadd -k {} HTTP/{h}@{REALM}", kt.display()))
            .collect();
        self.kadmin_script(&lines);
        kt
    }
}
