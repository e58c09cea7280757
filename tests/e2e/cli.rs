//! The command line fails clearly on a taken port or an unusable data dir.

use std::time::Duration;

use tokio::process::Command;

use crate::support::weir_binary;

async fn serve_fails(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(weir_binary()).arg("serve").args(args).output(),
    )
    .await
    .expect("weir exits promptly")
    .expect("weir runs");
    assert!(!out.status.success(), "weir serve {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test]
async fn taken_port_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_string_lossy().to_string();
    let stderr = serve_fails(&["--listen", &addr, "--data-dir", &data]).await;
    assert!(
        stderr.contains(&format!("weir: cannot listen on {addr}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn unusable_data_dir_is_a_one_line_error() {
    let file = tempfile::NamedTempFile::new().expect("file");
    let under_a_file = file.path().join("data");
    let stderr = serve_fails(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &under_a_file.to_string_lossy(),
    ])
    .await;
    assert!(stderr.contains("weir: cannot use data dir"), "{stderr}");
}

#[tokio::test]
async fn config_file_typos_are_reported() {
    let mut file = tempfile::NamedTempFile::new().expect("file");
    std::io::Write::write_all(&mut file, b"lisen = '127.0.0.1:0'\n").expect("write");
    let stderr = serve_fails(&["--config", &file.path().to_string_lossy()]).await;
    assert!(stderr.contains("unknown field `lisen`"), "{stderr}");
}

#[tokio::test]
async fn a_data_dir_from_another_version_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    let catalog = dir.path().join("catalog.json");
    let text = r#"{"format": 7, "statements": []}"#;
    std::fs::write(&catalog, text).expect("write");
    let data = dir.path().to_string_lossy().to_string();
    let stderr = serve_fails(&["--listen", "127.0.0.1:0", "--data-dir", &data]).await;
    assert!(
        stderr.contains("catalog format 7") && stderr.contains("Nothing was changed"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&catalog).expect("read"), text);
}
