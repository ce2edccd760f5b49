//! The data directory holds the store (join tokens, entries) and the CA keys: it is created
//! owner-only, a directory other users can write to is refused at start-up with one sentence,
//! and the CA journal is written owner-only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use ward_server::config::{Config, Overrides};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn data_dir_and_ca_files_are_created_owner_only() {
    let ts = TestServer::start().await;
    // The harness puts the socket in <tmp>/admin and the data in <tmp>/data.
    let data = ts.server.socket_path.parent().unwrap().parent().unwrap().join("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ca")), 0o700);
    assert_eq!(mode(&data.join("ca/keys")), 0o700);
    assert_eq!(mode(&data.join("ca/journal.json")), 0o600);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn start_refuses_a_data_dir_others_can_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let text = format!(
        "bind_address = \"127.0.0.1\"\nbind_port = 0\nsocket_path = \"{}\"\ndata_dir = \"{}\"\n",
        dir.path().join("api.sock").display(),
        data.display()
    );
    let cfg = Config::from_toml(&text, &Overrides::default()).unwrap();
    let err = ward_server::run::start(cfg).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("is writable by group or other users (mode 0777)"), "{text}");
    assert!(text.contains(&data.display().to_string()), "{text}");
    // Nothing was created inside the refused directory.
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
}
