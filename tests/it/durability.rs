//! Nothing acknowledged is lost: SIGKILL right after a 2xx, SIGTERM under load, redelivery after restart.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn sigkill_right_after_the_2xx_loses_nothing_and_redelivery_is_deduplicated() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let opts = Options::new(&oidc.metadata_url);
    let mut app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    let id = unique_id("crash");
    let body = message(&id);
    let token = key.mint(&good_claims());
    assert_eq!(app.status(Some(&token), &body).await, 202);
    app.kill(); // SIGKILL: no flush, no shutdown hook.

    let dir = app.dir.clone();
    let items = inbox(&app.config);
    assert_eq!(count_activity(&items, &id), 1, "{items:#?}");
    drop(app);

    // Teams redelivers the same activity to the restarted gateway: acknowledged, not stored twice.
    let app = TestApp::spawn_in(&dir, &opts).await.unwrap();
    app.wait_ready().await;
    assert_eq!(app.status(Some(&token), &body).await, 202);
    assert_eq!(count_activity(&app.inbox(), &id), 1);
    assert_eq!(app.metric("agentgate_requests_total{outcome=\"duplicate\"}").await, 1);
}

#[tokio::test]
async fn every_acknowledged_activity_survives_sigkill_under_load() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let opts = Options::new(&oidc.metadata_url);
    let mut app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    let token = key.mint(&good_claims());
    let ids: Vec<String> = (0..300).map(|_| unique_id("load")).collect();
    let mut set = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let (c, url, token) = (app.client().clone(), format!("{}/api/messages", app.url), token.clone());
        set.spawn(async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(message(&id).to_string())
                .send()
                .await;
            (id, r.map_or(0, |r| r.status().as_u16()))
        });
    }
    // Kill the gateway while requests are in flight.
    tokio::time::sleep(Duration::from_millis(40)).await;
    app.kill();
    let results = set.join_all().await;
    let acked: Vec<&String> = results.iter().filter(|(_, s)| *s == 202).map(|(id, _)| id).collect();
    let items = inbox(&app.config);
    for id in &acked {
        assert_eq!(count_activity(&items, id), 1, "acknowledged activity {id} is missing after SIGKILL");
    }
    // Whatever was stored but not acknowledged is there at most once.
    for id in &ids {
        assert!(count_activity(&items, id) <= 1);
    }
    eprintln!("{} of 300 acknowledged before the kill; {} stored", acked.len(), items.len());
}

#[tokio::test]
async fn sigterm_finishes_in_flight_commits_then_exits_cleanly() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let opts = Options::new(&oidc.metadata_url);
    let mut app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    let token = key.mint(&good_claims());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let id = unique_id("term");
        let (c, url, token) = (app.client().clone(), format!("{}/api/messages", app.url), token.clone());
        set.spawn(async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(message(&id).to_string())
                .send()
                .await;
            (id, r.map_or(0, |r| r.status().as_u16()))
        });
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let clean = tokio::task::spawn_blocking(move || {
        let ok = app.terminate();
        (ok, app)
    })
    .await
    .unwrap();
    let (ok, app) = clean;
    assert!(ok, "agentgate did not exit cleanly on SIGTERM:\n{}", app.stderr());
    let results = set.join_all().await;
    let items = app.inbox();
    let acked: Vec<_> = results.iter().filter(|(_, s)| *s == 202).collect();
    for (id, _) in &acked {
        assert_eq!(count_activity(&items, id), 1, "acknowledged {id} missing after SIGTERM");
    }
    assert!(app.stderr().contains("store closed"), "{}", app.stderr());
}
