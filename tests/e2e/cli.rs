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

/// `weir ARGS`, which must succeed and print one JSON object.
async fn run_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(weir_binary()).args(args).output(),
    )
    .await
    .expect("weir ends")
    .expect("weir runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    // Progress towards the events a run reads, ending at all of them.
    let all = figures["events"].as_u64().expect("events");
    assert!(
        stderr.contains(&format!(": {all}/{all} events (100%)")),
        "a last progress line: {stderr}"
    );
    // Every change's latency, so exact percentiles.
    assert!(
        figures["changes"].as_u64().is_some_and(|n| n > 0),
        "{figures}"
    );
    let ms = |key: &str| {
        figures[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {figures}"))
    };
    assert!(
        0.0 <= ms("latency_p50_ms")
            && ms("latency_p50_ms") <= ms("latency_p99_ms")
            && ms("latency_p99_ms") <= ms("latency_max_ms"),
        "{figures}"
    );
    figures
}

/// `weir bench` measures a query end to end and the input alone, in one run.
#[tokio::test]
async fn bench_reports_the_rate_of_a_query_and_of_its_input_alone() {
    let args = [
        "bench",
        "nexmark",
        "--query",
        "q2",
        "--events",
        "50000",
        "--parallelism",
        "2",
        "--json",
    ];
    let figures = run_json(&args.map(std::ffi::OsStr::new)).await;
    assert_eq!(figures["query"], "q2");
    assert_eq!(figures["parallelism"], 2, "{figures}");
    // Nexmark's bids are 46 of every 50 events.
    assert_eq!(figures["events"], 46_000, "{figures}");
    for key in [
        "events_per_second",
        "events_per_core_second",
        "peak_memory_mib",
        "ceiling_events_per_second",
    ] {
        assert!(
            figures[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {figures}"
        );
    }

    // A file of bids: the decoder alone is the ceiling.
    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("bids.jsonl");
    let lines: String = (0..1000)
        .map(|i| {
            format!(
                "{{\"auction\":{i},\"bidder\":1,\"price\":{},\"channel\":\"c\",\"url\":\"u\",\"date_time\":{},\"extra\":\"\"}}\n",
                i * 10,
                i * 5
            )
        })
        .collect();
    std::fs::write(&input, lines).expect("write");
    let sql = "SELECT auction, price FROM bid WHERE auction % 2 = 0";
    let args = [
        "bench".as_ref(),
        "file".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--sql".as_ref(),
        sql.as_ref(),
        "--json".as_ref(),
    ];
    let figures = run_json(&args).await;
    assert_eq!(figures["events"], 1000, "{figures}");
    assert!(
        figures["ceiling_events_per_second"]
            .as_f64()
            .is_some_and(|v| v > 0.0)
    );
}

#[tokio::test]
async fn ctrl_c_and_sigterm_take_a_last_checkpoint_and_exit_cleanly() -> anyhow::Result<()> {
    for signal in ["INT", "TERM"] {
        let weir = crate::support::Weir::start(&[]).await?;
        weir.exec("CREATE SOURCE s (id BIGINT) WITH (connector = 'http')")
            .await?;
        let (status, data_dir) = weir.stop_with(signal).await?;
        let log = std::fs::read_to_string(data_dir.path().join("weir.log"))?;
        assert!(status.success(), "exit after SIG{signal}: {status}\n{log}");
        assert!(
            log.contains("final checkpoint written"),
            "SIG{signal}: {log}"
        );
    }
    Ok(())
}

/// The server runs with weir's malloc thresholds (it restarts itself with them, keeping
/// its pid), unless the user set `GLIBC_TUNABLES`: theirs stay as they are.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn the_server_runs_with_its_malloc_tunables_unless_the_user_set_them() -> anyhow::Result<()> {
    use crate::support::Weir;
    // The server's environment as one string, `:` for each NUL: glibc cuts
    // `GLIBC_TUNABLES` at its colons as it reads it, so both read the same here.
    let environ_of = |weir: &Weir| -> anyhow::Result<String> {
        let pid = weir.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
        Ok(String::from_utf8_lossy(&environ).replace('\0', ":"))
    };
    let inherited = ["GLIBC_TUNABLES", "WEIR_MALLOC_RESTARTED"];
    if inherited.iter().all(|v| std::env::var_os(v).is_none()) {
        let weir = Weir::start(&[]).await?;
        let environ = environ_of(&weir)?;
        assert!(
            environ.contains(
                "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432:"
            ) && environ.contains("WEIR_MALLOC_RESTARTED=1"),
            "{environ}"
        );
        // The restarted server is the one that answers.
        weir.exec("CREATE SOURCE b WITH (connector = 'nexmark', table = 'bid', events = 1000)")
            .await?;
    } else {
        eprintln!("{inherited:?} set for the tests: only the user's own tunables are checked");
    }

    let own = "glibc.malloc.arena_max=2";
    let weir = Weir::start_with_env(tempfile::tempdir()?, &[], &[("GLIBC_TUNABLES", own)]).await?;
    let environ = environ_of(&weir)?;
    assert!(
        environ.contains(&format!("GLIBC_TUNABLES={own}:"))
            && !environ.contains("WEIR_MALLOC_RESTARTED"),
        "{environ}"
    );
    Ok(())
}
