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

fn config_with_socket(dir: &Path, socket: &Path) -> Config {
    let text = format!(
        "bind_address = \"127.0.0.1\"\nbind_port = 0\nsocket_path = \"{}\"\ndata_dir = \"{}\"\n",
        socket.display(),
        dir.join("data").display()
    );
    Config::from_toml(&text, &Overrides::default()).unwrap()
}

#[tokio::test]
async fn start_leaves_a_file_that_is_not_a_socket_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("precious.txt");
    std::fs::write(&socket, "keep me").unwrap();
    let err = ward_server::run::start(config_with_socket(dir.path(), &socket)).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("exists and is not a Unix socket"), "{text}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "keep me");
}

#[tokio::test]
async fn start_refuses_an_admin_socket_another_server_serves() {
    let ts = TestServer::start().await;
    let other = tempfile::tempdir().unwrap();
    let cfg = config_with_socket(other.path(), &ts.server.socket_path);
    let err = ward_server::run::start(cfg).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("another process is serving the admin socket"), "{text}");
    // The first server still answers on its socket.
    assert!(std::os::unix::net::UnixStream::connect(&ts.server.socket_path).is_ok());
    ts.server.shutdown().await;
    // A stale socket left behind is replaced.
    let stale = other.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let s = ward_server::run::start(config_with_socket(other.path(), &stale)).await.unwrap();
    assert!(std::os::unix::net::UnixStream::connect(&stale).is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn start_refuses_a_store_of_another_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let other = ward_core::TrustDomain::new("other.org").unwrap();
    drop(ward_store::Store::open(data.join("store"), ward_store::StoreConfig::new(other)).unwrap());
    let socket = dir.path().join("api.sock");
    let err = ward_server::run::start(config_with_socket(dir.path(), &socket)).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(
            "the store belongs to trust domain other.org, not the configured example.org; point \
             the server at its own data directory"
        ),
        "{text}"
    );
    assert!(!socket.exists(), "nothing was served");
}

#[tokio::test]
async fn start_checks_again_what_it_created_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let data = dir.path().join("data");
    let s = ward_server::run::start(config_with_socket(dir.path(), &socket)).await.unwrap();
    assert_eq!(mode(&data.join("store")), 0o700);
    s.shutdown().await;
    let key = std::fs::read_dir(data.join("ca/keys")).unwrap().next().unwrap().unwrap().path();
    // Each path ward created, made writable by others, is refused by name; put back, the
    // next one is tried.
    for (path, bad, good) in [
        (data.join("ca"), 0o770, 0o700),
        (data.join("ca/keys"), 0o777, 0o700),
        (data.join("store"), 0o702, 0o700),
        (data.join("ca/journal.json"), 0o666, 0o600),
        (key, 0o620, 0o600),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
        let err =
            ward_server::run::start(config_with_socket(dir.path(), &socket)).await.unwrap_err();
        let text = format!("{err:#}");
        let want =
            format!("{} is writable by group or other users (mode {bad:04o})", path.display());
        assert!(text.contains(&want), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(good)).unwrap();
    }
    let s = ward_server::run::start(config_with_socket(dir.path(), &socket)).await.unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = ward_server::run::start(config_with_socket(dir.path(), &dir.path().join("a.sock")))
        .await
        .unwrap();
    let want = format!(
        "data dir {} is in use by another ward-server process (pid {})",
        data.display(),
        std::process::id()
    );
    let err = ward_server::run::start(config_with_socket(dir.path(), &dir.path().join("b.sock")))
        .await
        .unwrap_err();
    assert_eq!(format!("{err:#}"), want);

    // The binary says the same and exits 1.
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "bind_address = \"127.0.0.1\"\nbind_port = 0\nsocket_path = \"{}\"\n\
             data_dir = \"{}\"\n",
            dir.path().join("c.sock").display(),
            data.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward-server"))
        .args(["run", "-config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.ends_with(&format!("Error: {want}\n")), "{stderr}");

    // Once the first server stops, the directory is free again.
    first.shutdown().await;
    let again = ward_server::run::start(config_with_socket(dir.path(), &dir.path().join("b.sock")))
        .await
        .unwrap();
    again.shutdown().await;
}
