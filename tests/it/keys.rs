//! The signing-key cache: rotation, unknown-kid floods, metadata outages, pinned issuer.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_at_most_one_fetch_per_cooldown() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let app = TestApp::spawn(&Options::new(&oidc.metadata_url)).await;
    app.wait_ready().await;
    let (meta0, jwks0) = (oidc.metadata_hits(), oidc.jwks_hits());
    assert_eq!((meta0, jwks0), (1, 1), "start-up loads the keys once");

    let bodies: Vec<_> = (0..60).map(|i| message(&unique_id(&format!("flood{i}")))).collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let token = TestKey::teams(&format!("random-kid-{i}"), 0).mint(&good_claims());
        let (c, url) = (app.client().clone(), format!("{}/api/messages", app.url));
        set.spawn(async move {
            c.post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let statuses = set.join_all().await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(oidc.metadata_hits() - meta0, 1, "one on-demand refresh for the whole flood");
    assert_eq!(oidc.jwks_hits() - jwks0, 1);
    assert_eq!(app.metric("agentgate_auth_failures_total{reason=\"unknown_kid\"}").await, 60);
    // Real traffic is unaffected.
    assert_eq!(app.status(Some(&key.mint(&good_claims())), &message(&unique_id("ok"))).await, 202);
}

#[tokio::test]
async fn key_rotation_in_and_out() {
    let old = TestKey::teams("kid-old", 0);
    let new = TestKey::teams("kid-new", 1);
    let oidc = FakeOidc::start(vec![old.clone()]).await;
    let app = TestApp::spawn(&Options::new(&oidc.metadata_url)).await;
    app.wait_ready().await;
    let old_token = old.mint(&good_claims());
    assert_eq!(app.status(Some(&old_token), &message(&unique_id("rot"))).await, 202);

    // Microsoft rotates: the new key replaces the old one. A token signed with the new key is picked up
    // at once through the on-demand refresh.
    oidc.set_keys(std::slice::from_ref(&new));
    assert_eq!(app.status(Some(&new.mint(&good_claims())), &message(&unique_id("rot"))).await, 202);
    // The old key is gone now, so the old token fails even though it was verified (and cached) before.
    assert_eq!(app.status(Some(&old_token), &message(&unique_id("rot"))).await, 401);
    assert_eq!(app.inbox().len(), 2);
}

#[tokio::test]
async fn metadata_outage_with_cached_keys_serves_the_last_good_keys_for_a_bounded_time() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.key_refresh_secs = 2;
    opts.stale_keys_grace_secs = 2;
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    oidc.set_down(true);
    // Still within refresh + grace: a never-seen token verifies with the last good keys.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = oidc.metadata_hits();
    assert_eq!(app.status(Some(&key.mint(&good_claims())), &message(&unique_id("out"))).await, 202);
    assert!(before >= 2, "the background refresh tried again while the endpoint was down");
    // Past the bound the keys are dropped: 503 (with Retry-After), not 401, and not ready.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = app.post(Some(&key.mint(&good_claims())), &message(&unique_id("out"))).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(app.client().get(format!("{}/readyz", app.url)).send().await.unwrap().status(), 503);
    assert!(app.metric("agentgate_key_refreshes_total{cloud=\"public\",result=\"error\"}").await >= 1);
    // The endpoint comes back: the gateway recovers by itself.
    oidc.set_down(false);
    app.wait_ready().await;
    assert_eq!(app.status(Some(&key.mint(&good_claims())), &message(&unique_id("out"))).await, 202);
}

#[tokio::test]
async fn metadata_outage_without_any_keys_answers_503_until_keys_load() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    oidc.set_down(true);
    let app = TestApp::spawn(&Options::new(&oidc.metadata_url)).await;
    let resp = app.post(Some(&key.mint(&good_claims())), &message(&unique_id("nokeys"))).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"unavailable"}"#);
    let ready = app.client().get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body, json!({"ready": false, "store": true, "signing_keys": false}));
    // Unauthenticated requests are still 401, not 503.
    assert_eq!(app.status(None, &message(&unique_id("nokeys"))).await, 401);
    assert!(app.inbox().is_empty());
    oidc.set_down(false);
    app.wait_ready().await;
    assert_eq!(app.status(Some(&key.mint(&good_claims())), &message(&unique_id("nokeys"))).await, 202);
}

#[tokio::test]
async fn metadata_with_another_issuer_is_never_trusted() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    *oidc.state.issuer.lock().unwrap() = "https://evil.example.com".to_owned();
    let app = TestApp::spawn(&Options::new(&oidc.metadata_url)).await;
    // Give the start-up fetch time to run (and be rejected).
    for _ in 0..100 {
        if oidc.metadata_hits() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(oidc.jwks_hits(), 0, "keys must not be fetched from an untrusted metadata document");
    assert_eq!(app.status(Some(&key.mint(&good_claims())), &message(&unique_id("iss"))).await, 503);
    assert!(app.stderr().contains("is not the pinned issuer"), "{}", app.stderr());
}
