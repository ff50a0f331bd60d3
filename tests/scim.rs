//! SCIM 2.0 provisioning on the portal, with the requests Entra ID sends (curl): a user
//! created, found by userName, set inactive (its live IMAP session closes and its app
//! password stops working), active again, deleted; a request without the right bearer
//! token refused.

mod support;

use std::process::Command;

use support::imap_client::ImapClient;
use support::postern::{remember_secrets, Options, Postern};
use support::Dovecot;

const TOKEN: &str = "scim-bearer-token-0123456789";

/// `method` `path` with `body` and the bearer `token`: status and body.
fn scim(
    postern: &Postern,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("https://localhost:{}{path}", postern.portal.unwrap().port());
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-X", method, "-w", "\n%{http_code}", "--cacert"])
        .arg(&postern.ca_path)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/scim+json"]);
    if let Some(body) = body {
        command.args(["--data-binary", body]);
    }
    let output = command.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_provider_pushes_joiners_and_leavers() {
    let dovecot = Dovecot::start();
    dovecot.add_user("carol@example.test", "carol-direct");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("scim-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    remember_secrets([TOKEN.to_string()]);
    let postern = Postern::start_with(
        &dovecot,
        Options {
            extra_config: format!(
                "[portal]\nbind = \"127.0.0.1:0\"\n[portal.notifications]\nenabled = false\n\
                 [scim]\ntoken_file = \"{}\"\n",
                token_file.display()
            ),
            ..Options::default()
        },
    )
    .await;

    // Entra ID's create request.
    let create = r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],"externalId":"carol","userName":"Carol@Example.test","active":true,"emails":[{"primary":true,"type":"work","value":"carol@example.test"}],"meta":{"resourceType":"User"},"name":{"formatted":"Carol Danvers","familyName":"Danvers","givenName":"Carol"},"roles":[]}"#;
    let (status, body) = scim(&postern, TOKEN, "POST", "/scim/v2/Users", Some(create));
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["userName"], "carol@example.test");
    assert_eq!(created["active"], true);
    let id = created["id"].as_str().unwrap().to_string();
    let (status, _) = scim(&postern, TOKEN, "POST", "/scim/v2/Users", Some(create));
    assert_eq!(status, 409, "a second create conflicts");

    // Entra ID looks people up by userName before it creates them.
    let (status, body) = scim(
        &postern,
        TOKEN,
        "GET",
        "/scim/v2/Users?filter=userName%20eq%20%22carol%40example.test%22",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["totalResults"], 1);
    assert_eq!(found["Resources"][0]["id"], id.as_str());
    let (_, body) = scim(
        &postern,
        TOKEN,
        "GET",
        "/scim/v2/Users?filter=userName%20eq%20%22nobody%22",
        None,
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["totalResults"],
        0
    );

    // carol works through postern, in a live IDLE session.
    let (_, password) = postern
        .issue("carol@example.test", &[postern::store::Scope::Imap], None)
        .await;
    let (mut session, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let login = session
        .command("a1", &format!("LOGIN carol@example.test \"{password}\""))
        .await;
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
    session.command("a2", "SELECT INBOX").await;
    session.send(b"a3 IDLE\r\n").await;
    assert_eq!(session.read_line().await, "+ idling");

    // Entra ID's leaver: active "False".
    let disable = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Replace","path":"active","value":"False"}]}"#;
    let (status, body) = scim(
        &postern,
        TOKEN,
        "PATCH",
        &format!("/scim/v2/Users/{id}"),
        Some(disable),
    );
    assert_eq!(status, 200, "{body}");
    let since = std::time::Instant::now();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["active"],
        false
    );
    assert!(
        session
            .closed_within(std::time::Duration::from_secs(10))
            .await,
        "the live session closes"
    );
    eprintln!(
        "IDLE session closed {:?} after the SCIM PATCH",
        since.elapsed()
    );
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let refused = client
        .command("b1", &format!("LOGIN carol@example.test \"{password}\""))
        .await;
    assert!(refused.last().unwrap().starts_with("b1 NO"), "{refused:?}");

    // Okta's way back: a value object.
    let enable = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","value":{"active":true}}]}"#;
    let (status, body) = scim(
        &postern,
        TOKEN,
        "PATCH",
        &format!("/scim/v2/Users/{id}"),
        Some(enable),
    );
    assert_eq!(status, 200, "{body}");
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let back = client
        .command("c1", &format!("LOGIN carol@example.test \"{password}\""))
        .await;
    assert!(back.last().unwrap().starts_with("c1 OK"), "{back:?}");

    // No token, a wrong one: refused, nothing changes.
    for token in ["", "not-the-token"] {
        let (status, _) = scim(
            &postern,
            token,
            "DELETE",
            &format!("/scim/v2/Users/{id}"),
            None,
        );
        assert_eq!(status, 401);
    }
    let (status, _) = scim(
        &postern,
        TOKEN,
        "DELETE",
        &format!("/scim/v2/Users/{id}"),
        None,
    );
    assert_eq!(status, 204);
    let (status, _) = scim(
        &postern,
        TOKEN,
        "GET",
        &format!("/scim/v2/Users/{id}"),
        None,
    );
    assert_eq!(status, 404);
    assert!(postern
        .store
        .user("carol@example.test")
        .await
        .unwrap()
        .is_none());
    let audit = postern.cli(&["audit", "--user", "carol@example.test", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("user_removed") && audit.contains("source=directory"),
        "{audit}"
    );
    postern.stop().await;
}
