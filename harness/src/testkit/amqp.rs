//! AMQP plumbing shared by probes and suites: lapin on the tokio runtime.

/// Connection properties that run lapin on the current tokio runtime.
pub fn properties() -> lapin::ConnectionProperties {
    lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
}
