//! HTTPS with rustls, certificate reload, and the plain-HTTP rules.

use std::time::Duration;

use crate::helpers::*;

fn self_signed(path_cert: &std::path::Path, path_key: &std::path::Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = ck.cert.pem();
    std::fs::write(path_cert, &cert).unwrap();
    std::fs::write(path_key, ck.signing_key.serialize_pem()).unwrap();
    cert
}

fn client_trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()]).build().unwrap()
}

#[tokio::test]
async fn serves_https_and_reloads_a_renewed_certificate() {
    let oidc = FakeOidc::start(vec![TestKey::teams("k", 0)]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let first = self_signed(&cert, &key);
    let mut opts = Options::new(&oidc.metadata_url);
    opts.extra =
        format!("\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval_secs = 1\n", cert.display(), key.display());
    let app = TestApp::spawn_in(&dir, &opts).await.unwrap();
    assert!(app.url.starts_with("https://127.0.0.1:"), "{}", app.url);
    let url = format!("{}/healthz", app.url.replace("127.0.0.1", "localhost"));
    let url = url.replacen("https://localhost", "https://127.0.0.1", 1);
    assert_eq!(client_trusting(&first).get(&url).send().await.unwrap().status(), 200);

    let second = self_signed(&cert, &key);
    let mut reloaded = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client_trusting(&second).get(&url).send().await.is_ok() {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the renewed certificate was not picked up:\n{}", app.stderr());
    assert!(client_trusting(&first).get(&url).send().await.is_err(), "the old certificate is still served");
    // Plain HTTP on the TLS port does not work.
    let plain = reqwest::get(url.replace("https://", "http://")).await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
}
