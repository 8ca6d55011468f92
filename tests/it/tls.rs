//! TLS serving (issue 14, part 3): `[server.tls]` over real loopback TLS with certificates from
//! throw-away rcgen CAs — HTTPS and HTTP/2 by ALPN, plain HTTP refused, certificate reload on
//! change and on SIGHUP (a broken file keeps the old certificate), client certificates mapped
//! to principals (`[[auth.client_certs]]`) who act and are audited as such, unmapped and
//! missing certificates refused, a revoked client certificate refused by the client CA's CRL
//! (reloaded like the other files), the metrics listener over TLS, and config validation.

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::Value;
use sessiongate::{
    auth::{ClientCertConfig, Role},
    config::Config,
    tls::{ClientAuth, TlsConfig, TlsVersion},
};
use sha2::Digest;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// A throw-away certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(&self, cn: &str, names: &[&str], eku: ExtendedKeyUsagePurpose) -> Leaf {
        self.leaf_serial(cn, names, eku, None)
    }

    fn leaf_serial(
        &self,
        cn: &str,
        names: &[&str],
        eku: ExtendedKeyUsagePurpose,
        serial: Option<u64>,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.serial_number = serial.map(SerialNumber::from);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let c = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: c.pem(),
            key: key.serialize_pem(),
            der: c.der().to_vec(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self, cn: &str) -> Leaf {
        self.leaf(
            cn,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, cn: &str) -> Leaf {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The CA's CRL number `number`, revoking the certificates with these serial numbers (PEM).
    fn crl(&self, revoked: &[u64], number: u64) -> String {
        let now = time::OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// Replaces `path` at once (write beside, rename), as a deployment tool would.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The files of one TLS set-up in `dir`.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn write(dir: &Path, server: &Leaf, client_ca: &Ca) -> Self {
        let f = Self {
            cert: dir.join("tls-cert.pem"),
            key: dir.join("tls-key.pem"),
            client_ca: dir.join("client-ca.pem"),
        };
        replace(&f.cert, &server.cert);
        replace(&f.key, &server.key);
        replace(&f.client_ca, &client_ca.pem);
        f
    }

    fn config(&self, client_auth: ClientAuth, reload_secs: u64) -> TlsConfig {
        TlsConfig {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            reload_secs,
            client_ca_file: (client_auth != ClientAuth::None).then(|| self.client_ca.clone()),
            client_crl_file: None,
            client_auth,
            min_version: TlsVersion::V1_2,
        }
    }
}

fn mapping(id: &str, cn: &str, roles: Vec<Role>) -> ClientCertConfig {
    ClientCertConfig {
        id: id.into(),
        subject_cn: Some(cn.into()),
        san_dns: None,
        san_uri: None,
        sha256: None,
        roles,
        pools: vec!["*".into()],
        display: None,
    }
}

/// The gateway with the demo config over TLS: `server` signed by `ca`, client certificates
/// from `client_ca` checked as `client_auth` says, `maps` as `[[auth.client_certs]]`.
async fn start(
    server: &Leaf,
    client_ca: &Ca,
    client_auth: ClientAuth,
    reload_secs: u64,
    maps: Vec<ClientCertConfig>,
) -> (TestApp, Files, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::write(dir.path(), server, client_ca);
    let tls = files.config(client_auth, reload_secs);
    let app = TestApp::start_with(move |c: &mut Config| {
        c.server.tls = Some(tls);
        c.auth.client_certs = maps;
        // Idle keep-alive connections stay open for the whole test (one outlives a reload).
        c.server.header_read_timeout_ms = 120_000;
    })
    .await;
    assert!(app.url.starts_with("https://"), "{}", app.url);
    (app, files, dir)
}

fn addr(app: &TestApp) -> SocketAddr {
    app.url.trim_start_matches("https://").parse().unwrap()
}

/// An HTTPS client trusting only `ca_pem`, presenting `identity` when given; a new client
/// has no pooled connection, so its first request makes a new TLS handshake.
fn client(ca_pem: &str, identity: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert, id.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// A raw TLS handshake trusting `roots`, offering `alpn`: the server's leaf certificate.
async fn handshake(
    at: SocketAddr,
    roots: &[&str],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(c.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(at)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The certificate a new connection is served.
async fn served(at: SocketAddr, roots: &[&str]) -> Vec<u8> {
    let s = handshake(at, roots, &[]).await.expect("handshake");
    s.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

/// Waits (bounded) until `done` holds.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sessiongate_tls_reloads_total{outcome=...}` of this process.
fn reloads(outcome: &str) -> u64 {
    let text = sessiongate::metrics::render().unwrap();
    let needle = format!("sessiongate_tls_reloads_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

/// Audit events (auditor key over TLS).
async fn audit(app: &TestApp, http: &reqwest::Client, query: &str) -> Vec<Value> {
    let r = http
        .get(format!("{}/audit?{query}", app.url))
        .bearer_auth(&app.keys.auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["events"].as_array().unwrap().clone()
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn https_serves_h2_and_http1_and_refuses_plain_http() {
    let ca = Ca::new("server CA");
    let server = ca.server("gateway");
    let (app, _files, _dir) = start(&server, &ca, ClientAuth::None, 10, vec![]).await;
    let http = client(&ca.pem, None);

    let r = http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    assert_eq!(info.peer_certificate(), Some(server.der.as_slice()));
    // The API works over it as over HTTP.
    let r = http
        .get(format!("{}/hostpools", app.url))
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // HTTP/2 by ALPN: the handshake picks h2 and a request over HTTP/2 is answered.
    let s = handshake(addr(&app), &[&ca.pem], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost:{}/healthz", addr(&app).port()))
        .body(String::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    // A client offering only http/1.1 gets it.
    let s = handshake(addr(&app), &[&ca.pem], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://{}/healthz", addr(&app)))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP answered: {r:?}");
    // Nor does a client that does not trust the CA get through.
    let other = Ca::new("someone else's CA");
    assert!(
        client(&other.pem, None)
            .get(format!("{}/healthz", app.url))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn changed_files_reach_new_connections_and_a_broken_file_keeps_the_old_cert() {
    let ca1 = Ca::new("CA one");
    let ca2 = Ca::new("CA two");
    let first = ca1.server("gateway-one");
    let (app, files, _dir) = start(&first, &ca1, ClientAuth::None, 1, vec![]).await;
    let at = addr(&app);
    assert_eq!(served(at, &[&ca1.pem, &ca2.pem]).await, first.der);

    // A connection opened now keeps working across the reload.
    let kept = client(&ca1.pem, None);
    let r = kept
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A broken certificate file: logged, counted, and the old certificate stays.
    let errors = reloads("error");
    replace(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    eventually("the broken file is tried", || async {
        reloads("error") > errors
    })
    .await;
    assert_eq!(served(at, &[&ca1.pem, &ca2.pem]).await, first.der);
    assert!(
        client(&ca2.pem, None)
            .get(format!("{}/healthz", app.url))
            .send()
            .await
            .is_err(),
        "nobody gets a certificate of CA two yet"
    );

    // New certificate and key from another CA: new connections get it.
    let second = ca2.server("gateway-two");
    let oks = reloads("ok");
    replace(&files.key, &second.key);
    replace(&files.cert, &second.cert);
    eventually("the new certificate is served", || async {
        served(at, &[&ca1.pem, &ca2.pem]).await == second.der
    })
    .await;
    assert!(reloads("ok") > oks);
    let r = client(&ca2.pem, None)
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate()),
        Some(second.der.as_slice())
    );
    // The earlier connection still answers (it keeps the certificate it was opened with).
    let r = kept
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate()),
        Some(first.der.as_slice())
    );
    let m = sessiongate::metrics::render().unwrap();
    assert!(
        m.contains("sessiongate_tls_certificate_expiry_timestamp_seconds "),
        "{m}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_when_polling_is_off() {
    let ca = Ca::new("CA");
    let first = ca.server("before-hup");
    let (app, files, _dir) = start(&first, &ca, ClientAuth::None, 0, vec![]).await;
    let at = addr(&app);
    // Served once: the accept loop, and with it the SIGHUP handler, is running.
    assert_eq!(served(at, &[&ca.pem]).await, first.der);
    let second = ca.server("after-hup");
    replace(&files.key, &second.key);
    replace(&files.cert, &second.cert);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served(at, &[&ca.pem]).await,
        first.der,
        "reload_secs = 0: no polling"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("SIGHUP reloads", || async {
        served(at, &[&ca.pem]).await == second.der
    })
    .await;
}

#[tokio::test]
async fn a_mapped_client_certificate_acts_as_its_principal_and_an_unmapped_one_is_refused() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = server_ca.server("gateway");
    let snow = client_ca.client("servicenow-mid");
    let stranger = client_ca.client("stranger");
    let (app, _files, _dir) = start(
        &server,
        &client_ca,
        ClientAuth::Optional,
        10,
        vec![mapping(
            "servicenow",
            "ServiceNow-MID",
            vec![Role::Operator],
        )],
    )
    .await;

    // The mapped certificate, no Authorization header: it lists and logs off.
    let http = client(&server_ca.pem, Some(&snow));
    let r = http
        .get(format!("{}/hostpools/{AVD_POOL}/sessions", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (host, id, _) = app.avd_target();
    let r = http
        .post(format!("{}/logoff", app.session_url(AVD_POOL, &host, id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logoff_rid = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done");
    assert!(
        !app.arm()
            .sessions(ARM_POOL)
            .iter()
            .any(|s| s.host == host && s.id == id)
    );
    // Its roles bound it: an operator reads no audit log.
    let r = http.get(format!("{}/audit", app.url)).send().await.unwrap();
    problem(r, 403, "forbidden").await;

    // Not for browsers: with an Origin header (a form another site posts) the certificate
    // authenticates nothing, and nothing is done.
    let (host2, id2, _) = app
        .arm()
        .sessions(ARM_POOL)
        .into_iter()
        .map(|s| (s.host, s.id, s.user))
        .next()
        .expect("another session");
    let r = http
        .post(format!("{}/logoff", app.session_url(AVD_POOL, &host2, id2)))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x=1")
        .send()
        .await
        .unwrap();
    problem(r, 401, "invalid_credentials").await;
    assert!(
        app.arm()
            .sessions(ARM_POOL)
            .iter()
            .any(|s| s.host == host2 && s.id == id2),
        "no logoff on a cross-site form post"
    );

    // A header still wins over the certificate, a bad one fails.
    let r = http
        .get(format!("{}/hostpools", app.url))
        .bearer_auth("sg_not-a-key")
        .send()
        .await
        .unwrap();
    problem(r, 401, "invalid_credentials").await;
    let r = http
        .get(format!("{}/hostpools", app.url))
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A verified certificate nobody mapped: 401 client_cert_unmapped.
    let r = client(&server_ca.pem, Some(&stranger))
        .get(format!("{}/hostpools", app.url))
        .send()
        .await
        .unwrap();
    let unmapped_rid = request_id(&r);
    problem(r, 401, "client_cert_unmapped").await;

    // optional: no certificate at all is a request without credentials.
    let anon = client(&server_ca.pem, None);
    let r = anon
        .get(format!("{}/hostpools", app.url))
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthenticated").await;
    // A certificate from a CA not in client_ca_file ends the handshake.
    let rogue = Ca::new("rogue CA").client("servicenow-mid");
    assert!(
        client(&server_ca.pem, Some(&rogue))
            .get(format!("{}/hostpools", app.url))
            .send()
            .await
            .is_err()
    );

    // The audit log names the principal and the method, and the refusal.
    let evs = audit(&app, &anon, "limit=1000").await;
    let acted: Vec<&Value> = evs
        .iter()
        .filter(|e| e["request_id"] == logoff_rid.as_str())
        .collect();
    assert!(
        acted.iter().any(|e| e["kind"] == "intent") && acted.iter().any(|e| e["kind"] == "outcome"),
        "{acted:?}"
    );
    for e in &acted {
        assert_eq!(e["actor"]["id"], "cert:servicenow", "{e}");
        assert_eq!(e["actor"]["auth_method"], "client_cert", "{e}");
        assert_eq!(e["actor"]["roles"], serde_json::json!(["operator"]), "{e}");
    }
    let refused = evs
        .iter()
        .find(|e| e["request_id"] == unmapped_rid.as_str())
        .expect("the unmapped certificate's 401 is audited");
    assert_eq!(refused["outcome"], "unauthenticated");
    assert_eq!(refused["error_code"], "client_cert_unmapped");
    assert_eq!(refused["params"]["auth_error"], "client_cert_unmapped");
    assert_eq!(refused["actor"]["id"], "anonymous");
    assert_eq!(refused["actor"]["auth_method"], "client_cert");
    assert_eq!(refused["actor"]["display"], "stranger");
    let m = sessiongate::metrics::render().unwrap();
    assert!(
        m.contains(r#"sessiongate_auth_failures_total{reason="client_cert_unmapped"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn required_client_auth_refuses_the_handshake_without_a_certificate() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = server_ca.server("gateway");
    let mid = client_ca.client("mid");
    let mut by_fingerprint = mapping("mid", "x", vec![Role::Reader]);
    by_fingerprint.subject_cn = None;
    by_fingerprint.sha256 = Some(hex::encode(sha2::Sha256::digest(&mid.der)));
    let (app, _files, _dir) = start(
        &server,
        &client_ca,
        ClientAuth::Required,
        10,
        vec![by_fingerprint],
    )
    .await;
    let r = client(&server_ca.pem, None)
        .get(format!("{}/healthz", app.url))
        .send()
        .await;
    assert!(r.is_err(), "no certificate, no connection: {r:?}");
    let http = client(&server_ca.pem, Some(&mid));
    let r = http
        .get(format!("{}/hostpools", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The fingerprint maps the certificate to a reader: acting is forbidden.
    let (host, id, _) = app.avd_target();
    let r = http
        .post(format!("{}/logoff", app.session_url(AVD_POOL, &host, id)))
        .send()
        .await
        .unwrap();
    problem(r, 403, "forbidden").await;
}

#[tokio::test]
async fn the_metrics_listener_serves_tls_too() {
    let ca = Ca::new("CA");
    let server = ca.server("gateway");
    let dir = tempfile::tempdir().unwrap();
    let files = Files::write(dir.path(), &server, &ca);
    let tls = files.config(ClientAuth::None, 10);
    let app = TestApp::start_with(move |c: &mut Config| {
        c.server.tls = Some(tls);
        c.metrics.listen = Some(
            format!("127.0.0.1:{}", crate::support::free_port())
                .parse()
                .unwrap(),
        );
        c.metrics.public = true;
    })
    .await;
    let built = sessiongate::app::build_app(&app.config).await.expect("app");
    let (at, router) = built.metrics.clone().expect("a metrics router");
    let listener = tokio::net::TcpListener::bind(at).await.expect("bind");
    let task = tokio::spawn(sessiongate::app::serve_metrics_with(
        router,
        listener,
        built.tls.clone(),
        Duration::from_secs(5),
    ));
    let r = client(&ca.pem, None)
        .get(format!("https://{at}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("# TYPE"));
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        plain
            .get(format!("http://{at}/metrics"))
            .send()
            .await
            .is_err()
    );
    task.abort();
}

#[test]
fn config_validation_names_the_key_and_the_file() {
    let ca = Ca::new("CA");
    let good = ca.server("gateway");
    let other = ca.server("other");
    let dir = tempfile::tempdir().unwrap();
    let files = Files::write(dir.path(), &good, &ca);
    let toml_path = |p: &Path| p.display().to_string().replace('\\', "\\\\");
    let text = |cert: &Path, key: &Path, extra: &str| {
        format!(
            "[server]\ndata_dir = \"{}\"\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
            toml_path(dir.path()),
            toml_path(cert),
            toml_path(key),
        )
    };
    let check =
        |t: &str| Config::from_toml_with_env(t, vec![]).and_then(|c| c.validate().map(|_| ()));

    check(&text(&files.cert, &files.key, "")).expect("valid");
    let e = check(&text(&dir.path().join("missing.pem"), &files.key, "")).unwrap_err();
    assert_eq!(e.key, "server.tls.cert_file");
    assert!(e.message.contains("missing.pem"), "{e}");

    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key).unwrap();
    let e = check(&text(&files.cert, &other_key, "")).unwrap_err();
    assert_eq!(e.key, "server.tls.key_file");
    assert!(
        e.message.contains("does not match") && e.message.contains("other-key.pem"),
        "{e}"
    );

    let e = check(&text(
        &files.cert,
        &files.key,
        "client_auth = \"required\"\n",
    ))
    .unwrap_err();
    assert_eq!(e.key, "server.tls.client_ca_file");
    let e = check(&text(&files.cert, &files.key, "min_version = \"1.0\"\n")).unwrap_err();
    assert_eq!(e.key, "server.tls.min_version");
    let e = check(&text(&files.cert, &files.key, "ciphers = []\n")).unwrap_err();
    assert_eq!(e.key, "server.tls.ciphers");

    // An expired certificate is served, with a warning (`config check` prints it).
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    p.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = p.self_signed(&key).unwrap();
    let (old_cert, old_key) = (dir.path().join("old.pem"), dir.path().join("old-key.pem"));
    std::fs::write(&old_cert, expired.pem()).unwrap();
    std::fs::write(&old_key, key.serialize_pem()).unwrap();
    let v = Config::from_toml_with_env(&text(&old_cert, &old_key, ""), vec![])
        .unwrap()
        .validate()
        .expect("an expired certificate is not an error");
    let w = v.warnings();
    assert!(
        w.len() == 1 && w[0].contains("expired") && w[0].contains("old.pem"),
        "{w:?}"
    );
    let v = Config::from_toml_with_env(&text(&files.cert, &files.key, ""), vec![])
        .unwrap()
        .validate()
        .unwrap();
    assert!(v.warnings().is_empty());

    // Client certificate mappings need client certificates.
    let mapping =
        "[[auth.client_certs]]\nid = \"snow\"\nsubject_cn = \"mid\"\nroles = [\"operator\"]\n";
    let e = check(&format!(
        "[server]\ndata_dir = \"{}\"\n{mapping}",
        toml_path(dir.path())
    ))
    .unwrap_err();
    assert_eq!(e.key, "auth.client_certs");
    let with_ca = format!(
        "client_auth = \"optional\"\nclient_ca_file = \"{}\"\n{mapping}",
        toml_path(&files.client_ca)
    );
    check(&text(&files.cert, &files.key, &with_ca)).expect("valid with client certificates");
    let e = check(&text(
        &files.cert,
        &files.key,
        &with_ca.replace("subject_cn = \"mid\"", "sha256 = \"12:34\""),
    ))
    .unwrap_err();
    assert_eq!(e.key, "auth.client_certs[0].sha256");
}

#[tokio::test]
async fn probe_checks_an_https_server_trusting_its_ca() {
    let ca = Ca::new("private CA");
    let server = ca.server("gateway");
    let (app, files, _dir) = start(&server, &ca, ClientAuth::None, 10, vec![]).await;
    let url = format!("https://localhost:{}/healthz", addr(&app).port());
    let ca_file = files.cert.with_file_name("server-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let probe = |extra: Vec<String>| {
        let url = url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
                .args(["probe", "--url", &url])
                .args(extra)
                .output()
                .await
                .unwrap()
        }
    };
    let ok = probe(vec!["--ca-file".into(), ca_file.display().to_string()]).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let untrusted = probe(vec![]).await;
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("unhealthy"));
}

/// `client_crl_file`: a client certificate the client CA has revoked is refused in the
/// handshake while another of the same CA and name passes; a newly published CRL reaches new
/// connections without a restart.
#[tokio::test]
async fn a_revoked_client_certificate_is_refused_and_a_new_crl_is_reloaded() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = server_ca.server("gateway");
    let ext = ExtendedKeyUsagePurpose::ClientAuth;
    let kept = client_ca.leaf_serial("servicenow-mid", &[], ext.clone(), Some(1001));
    let lost = client_ca.leaf_serial("servicenow-mid", &[], ext, Some(1002));
    let dir = tempfile::tempdir().unwrap();
    let files = Files::write(dir.path(), &server, &client_ca);
    let crl = dir.path().join("client-crl.pem");
    replace(&crl, &client_ca.crl(&[], 1));
    let mut tls = files.config(ClientAuth::Required, 1);
    tls.client_crl_file = Some(crl.clone());
    let app = TestApp::start_with(move |c: &mut Config| {
        c.server.tls = Some(tls);
        c.auth.client_certs = vec![mapping("servicenow", "servicenow-mid", vec![Role::Reader])];
    })
    .await;
    let status = |leaf: &Leaf| {
        let http = client(&server_ca.pem, Some(leaf));
        let url = format!("{}/hostpools", app.url);
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(status(&kept).await.unwrap(), 200);
    assert_eq!(status(&lost).await.unwrap(), 200, "not revoked yet");
    // The CA publishes a CRL revoking 1002.
    replace(&crl, &client_ca.crl(&[1002], 2));
    eventually("the new CRL refuses the revoked certificate", || async {
        status(&lost).await.is_err()
    })
    .await;
    assert_eq!(
        status(&kept).await.unwrap(),
        200,
        "the other one still passes"
    );
    // A broken CRL keeps the last good one.
    replace(&crl, "not a CRL");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(status(&lost).await.is_err());
    assert_eq!(status(&kept).await.unwrap(), 200);
}
