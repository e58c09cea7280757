//! The AWS SDK as connectors use it: a configuration from a connector's `region` and
//! `endpoint` options over the default chain (environment, profile, instance role),
//! and one small runtime the SDK's calls run on, since connectors' threads are not
//! async.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-aws")
        .enable_all()
        .build()
        .expect("cannot start the AWS runtime")
});

/// Run `f` on the AWS runtime and wait for it; callable from any thread, a runtime's
/// own included.
pub fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    RUNTIME.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the AWS runtime dropped a call")
}

/// Run `f` on the AWS runtime without waiting for it (work whose outcome is logged).
pub fn spawn<F>(f: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    RUNTIME.spawn(f);
}

/// Where a connector's AWS service is.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// Default: the chain's (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// Overrides the region's endpoint (a VPC endpoint, a local one).
    pub endpoint: Option<String>,
}

impl Endpoint {
    /// The SDK configuration: credentials and region from the default chain unless the
    /// options say; short timeouts and three attempts, so a dead endpoint shows soon.
    pub fn config(&self) -> Result<SdkConfig, String> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = block_on(loader.load());
        match (config.region(), &self.endpoint) {
            (Some(_), _) => Ok(config),
            // The endpoint is enough to find the service; a region is still signed.
            (None, Some(_)) => Ok(config
                .into_builder()
                .region(Region::new("us-east-1"))
                .build()),
            (None, None) => Err(
                "no AWS region: set the region option, or AWS_REGION, or a region in the AWS profile"
                    .into(),
            ),
        }
    }
}

/// An SDK error with its whole chain of causes (its `Display` says only "service
/// error").
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
