//! Row level security through the real gateway and PostgREST of the shared
//! stack: anon, an authenticated user and the service role each see what they
//! should, with legacy JWT keys and with sb_ keys.

use std::time::Duration;

use serde_json::{json, Map, Value};

use dualwrite::catalogue;
use dualwrite::db::RestClient;
use dualwrite::keys;

use crate::harness::{stack, unique};

async fn rows(c: &RestClient, table: &str, col: &str, val: &str) -> Vec<Map<String, Value>> {
    let key = if table == "user_prefs" {
        "user_id"
    } else {
        "id"
    };
    c.select_page(table, "*", &[(col, Some(val.to_owned()))], key, None, 100)
        .await
        .unwrap()
}

fn user_client(sub: &str) -> RestClient {
    let s = stack();
    let jwt = keys::sign(
        s.jwt_secret(),
        "authenticated",
        Some(sub),
        Duration::from_secs(600),
    )
    .unwrap();
    s.client(s.var("SUPABASE_PUBLISHABLE_KEY"), Some(jwt))
}

#[tokio::test]
async fn each_role_sees_what_it_should() {
    needs_stack!();
    let s = stack();
    let service = s.service_client();
    let (ua, ub) = (unique("user-a"), unique("user-b"));
    let art = unique("rls-artifact");
    let body = |v: Value| serde_json::to_string(&v).unwrap();
    service
        .upsert(
            &catalogue::CIPHER_MEMORY,
            body(json!([
                {"id": unique("m"), "category": "fact", "content": {"a": 1}, "context": null, "user_id": ua, "created_at": "2025-01-01T00:00:00Z"},
                {"id": unique("m"), "category": "fact", "content": {"b": 2}, "context": null, "user_id": ub, "created_at": "2025-01-01T00:00:00Z"}
            ])),
        )
        .await
        .unwrap();
    service
        .upsert(
            &catalogue::USER_PREFS,
            body(json!([{"user_id": ua, "preferences": {"t": 1}, "updated_at": null}])),
        )
        .await
        .unwrap();
    service
        .upsert(
            &catalogue::ARTIFACT,
            body(json!([{"id": art, "filename": "f", "filepath": "p", "filetype": ".pdf"}])),
        )
        .await
        .unwrap();

    // The service role sees everything, with the legacy JWT or the sb_secret_ key.
    let secret = s.client(s.var("SUPABASE_SECRET_KEY"), None);
    for c in [&service, &secret] {
        assert_eq!(rows(c, "cipher_memory", "user_id", &ua).await.len(), 1);
        assert_eq!(rows(c, "cipher_memory", "user_id", &ub).await.len(), 1);
        assert_eq!(rows(c, "artifacts", "id", &art).await.len(), 1);
    }

    // anon (legacy key or publishable key) sees nothing at all.
    let anon = s.client(s.var("SUPABASE_ANON_KEY"), None);
    let publishable = s.client(s.var("SUPABASE_PUBLISHABLE_KEY"), None);
    for c in [&anon, &publishable] {
        assert!(rows(c, "cipher_memory", "user_id", &ua).await.is_empty());
        assert!(rows(c, "user_prefs", "user_id", &ua).await.is_empty());
        assert!(rows(c, "artifacts", "id", &art).await.is_empty());
    }

    // An authenticated user sees its own cipher rows, not another's; reads document data.
    let a = user_client(&ua);
    assert_eq!(rows(&a, "cipher_memory", "user_id", &ua).await.len(), 1);
    assert!(rows(&a, "cipher_memory", "user_id", &ub).await.is_empty());
    let prefs = a
        .select_page(
            "user_prefs",
            "*",
            &[("user_id", Some(ua.clone()))],
            "user_id",
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(prefs.len(), 1);
    assert_eq!(rows(&a, "artifacts", "id", &art).await.len(), 1);
    // It never writes someone else's rows (its own only in the "primary"
    // access state: tests/it/safety.rs tests both states).
    let other = json!([{"id": unique("m"), "category": "preference", "content": {}, "context": null, "user_id": ub, "created_at": null}]);
    let e = a
        .upsert(&catalogue::CIPHER_MEMORY, body(other))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("42501"), "{e}");
    // Nor write document data.
    let doc = json!([{"id": unique("doc"), "path": "p", "type": "pdf", "title": null, "source": null, "created_at": null}]);
    assert_eq!(
        a.upsert(&catalogue::DOCUMENT, body(doc))
            .await
            .unwrap_err()
            .code(),
        Some("42501")
    );
}

#[tokio::test]
async fn the_gateway_refuses_missing_and_unknown_keys() {
    needs_stack!();
    let s = stack();
    let url = format!("{}/artifacts?limit=1", s.rest_url());
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("No API key found"));
    let c = s.client("sb_secret_not-a-real-key", None);
    let e = c.count("artifacts").await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
}
