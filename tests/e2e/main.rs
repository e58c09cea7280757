//! End-to-end tests: each starts the real `weir` binary on a free port and talks to it
//! over HTTP. Build the binary first (`cargo build -p weir-web`); `scripts/test.sh` does.

mod cli;
mod console;
mod dynamodb_sink;
mod files_sink;
mod http_pipeline;
mod kafka;
mod kafka_front_door;
mod kafka_sink;
mod kinesis;
mod kinesis_leases;
mod kinesis_sink;
mod limits;
mod nexmark;
mod oracle;
mod plugins;
mod postgres_sink;
mod recovery;
mod redis_sink;
mod sink_runs;
mod soak;
mod sql_fuzz;
mod support;
mod tls;
mod tokens;
