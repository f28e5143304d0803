//! Verifying a provider against all its pacts at once: the request ([`VerifyRequest`]: which
//! provider, which candidate of it, pacts from the directory or a broker, publishing), its
//! checks, and [`Contracts::verify_provider`] / [`Contracts::verify_suite`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pact_models::http_utils::HttpAuth;
use pact_verifier::{FilterInfo, PactSource, PublishOptions};
use serde_json::Value;

use super::report::VerifyReport;
use super::states::StateChange;
use super::verifier::{provider_target, Verification};
use super::{Contracts, Error};
use crate::manifest::Launch;
use crate::model::template::Template;
use crate::settings::Settings;
use crate::testkit::runner::Suite;
use crate::{Manifest, Stack};

/// Where the suite binary writes its [`VerifyReport`](super::VerifyReport) as JSON for `harness verify`.
pub(crate) const ENV_REPORT: &str = "HARNESS_VERIFY_REPORT";

/// Where pacts come from when not from the directory: a Pact Broker.
#[derive(Clone, Default, PartialEq)]
pub struct BrokerSource {
    /// The broker's base URL.
    pub url: String,
    /// Its bearer token ([`VerifyRequest::from_env`]: `PACT_BROKER_TOKEN`). Never printed and
    /// never put in the `HARNESS_VERIFY_*` environment.
    pub token: Option<String>,
    /// Consumer version selectors, as the broker's JSON objects (e.g. `{"mainBranch": true}`).
    pub selectors: Vec<Value>,
    /// Verify pending pacts without failing the run on them.
    pub enable_pending: bool,
    /// Also verify work-in-progress pacts created since this date.
    pub include_wip_pacts_since: Option<String>,
}

impl std::fmt::Debug for BrokerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSource")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("selectors", &self.selectors)
            .field("enable_pending", &self.enable_pending)
            .field("include_wip_pacts_since", &self.include_wip_pacts_since)
            .finish()
    }
}

/// Publishing verification results to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// The provider version verified (required).
    pub provider_version: String,
    /// The provider's branch.
    pub branch: Option<String>,
    /// A link to the build.
    pub build_url: Option<String>,
}

/// The candidate of the provider to verify, in place of the manifest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// A binary run natively.
    Binary(PathBuf),
    /// An image, for the container backend.
    Image(String),
    /// An image built from this Docker build context (its `Dockerfile`), for the container
    /// backend; built as a manifest's `build` is, once per content.
    Build(PathBuf),
}

impl Candidate {
    /// The candidate a binary or an image setting names; both at once are refused, naming the
    /// two settings.
    pub(crate) fn either(
        binary: Option<PathBuf>,
        image: Option<String>,
        settings: [&'static str; 2],
    ) -> Result<Option<Candidate>, Error> {
        match (binary, image) {
            (Some(_), Some(_)) => Err(Error::setting(
                settings[0],
                format!("set {} or {}, not both", settings[0], settings[1]),
            )),
            (Some(b), None) => Ok(Some(Candidate::Binary(b))),
            (None, Some(i)) => Ok(Some(Candidate::Image(i))),
            (None, None) => Ok(None),
        }
    }
}

/// A `harness verify` request: carried from the command to the suite binary in the environment
/// (`HARNESS_VERIFY_*`), so the suite's own provider-state handlers and message producers run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyRequest {
    /// The provider to verify.
    pub provider: String,
    /// Its candidate; `None`: the manifest's.
    pub candidate: Option<Candidate>,
    /// Pacts from a broker; `None`: from the contracts directory.
    pub broker: Option<BrokerSource>,
    /// Publish the results (broker only).
    pub publish: Option<Publish>,
    /// `--pacts`: pact files, directories of them and URLs (any Pact implementation's, V2 to
    /// V4) verified instead of the contracts directory (and beside a broker's).
    pub pacts: Vec<String>,
    /// `--consumer`: only the pacts of these consumers; empty: every consumer's.
    pub consumers: Vec<String>,
    /// `--state-change-url`: provider states from the provider's own URL instead of a suite's
    /// handlers.
    pub state_change: Option<StateChange>,
}

/// A `harness verify` request as its command line gives it, before it is checked: see
/// [`VerifyRequest::from_settings`].
#[derive(Debug, Clone, Default)]
pub struct VerifySettings {
    /// The provider to verify.
    pub provider: String,
    /// `--binary`: a candidate binary.
    pub binary: Option<PathBuf>,
    /// `--image`: a candidate image.
    pub image: Option<String>,
    /// `--build`: a candidate built from this Docker build context.
    pub build: Option<PathBuf>,
    /// `--broker-url`: pacts from this broker.
    pub broker_url: Option<String>,
    /// `--consumer-version-selector`: each a JSON object.
    pub selectors: Vec<String>,
    /// `--enable-pending`.
    pub enable_pending: bool,
    /// `--include-wip-pacts-since`.
    pub include_wip_pacts_since: Option<String>,
    /// `--publish`.
    pub publish: bool,
    /// `--provider-version`.
    pub provider_version: Option<String>,
    /// `--branch`.
    pub branch: Option<String>,
    /// `--build-url`.
    pub build_url: Option<String>,
    /// `--pacts`: files, directories and URLs.
    pub pacts: Vec<String>,
    /// `--consumer`: the consumers whose pacts are verified.
    pub consumers: Vec<String>,
    /// `--state-change-url`.
    pub state_change_url: Option<String>,
    /// `--state-change-teardown`.
    pub state_change_teardown: bool,
}

impl VerifyRequest {
    /// The request `settings` describe, checked before anything is built: the provider is a
    /// service of `manifest`, the broker options come with a broker, the selectors are JSON,
    /// and [`VerifyRequest::validate`] holds.
    pub fn from_settings(
        settings: VerifySettings,
        manifest: &Manifest,
    ) -> Result<VerifyRequest, Error> {
        if manifest.service(&settings.provider).is_none() {
            return Err(Error::UnknownProvider {
                provider: settings.provider,
            });
        }
        let broker = match settings.broker_url {
            Some(url) => {
                let selectors = settings
                    .selectors
                    .iter()
                    .map(|s| {
                        serde_json::from_str::<Value>(s).map_err(|e| {
                            Error::setting(
                                "--consumer-version-selector",
                                format!("--consumer-version-selector {s}: not JSON: {e}"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(BrokerSource {
                    url,
                    // Read again by the suite binary, which inherits the environment.
                    token: None,
                    selectors,
                    enable_pending: settings.enable_pending,
                    include_wip_pacts_since: settings.include_wip_pacts_since,
                })
            }
            None if !settings.selectors.is_empty()
                || settings.enable_pending
                || settings.include_wip_pacts_since.is_some() =>
            {
                return Err(Error::setting(
                    "--broker-url",
                    "--consumer-version-selector, --enable-pending and --include-wip-pacts-since need --broker-url",
                ));
            }
            None => None,
        };
        // A missing version is reported by `validate`, for requests from the environment too.
        let publish = settings.publish.then(|| Publish {
            provider_version: settings.provider_version.unwrap_or_default(),
            branch: settings.branch,
            build_url: settings.build_url,
        });
        let request = VerifyRequest {
            provider: settings.provider,
            candidate: match settings.build {
                Some(_) if settings.binary.is_some() || settings.image.is_some() => {
                    return Err(Error::setting(
                        "--build",
                        "give one candidate: --binary, --image or --build",
                    ))
                }
                Some(context) => Some(Candidate::Build(context)),
                None => {
                    Candidate::either(settings.binary, settings.image, ["--binary", "--image"])?
                }
            },
            broker,
            publish,
            pacts: settings.pacts,
            consumers: settings.consumers,
            state_change: match settings.state_change_url {
                Some(url) => Some(StateChange {
                    url,
                    teardown: settings.state_change_teardown,
                }),
                None if settings.state_change_teardown => {
                    return Err(Error::setting(
                        "--state-change-teardown",
                        "--state-change-teardown needs --state-change-url <url>",
                    ))
                }
                None => None,
            },
        };
        request.validate()?;
        Ok(request)
    }

    /// Checks the request: publishing needs a broker and a provider version.
    pub fn validate(&self) -> Result<(), Error> {
        if self.provider.trim().is_empty() {
            return Err(Error::setting(
                "provider",
                "the provider to verify is empty",
            ));
        }
        if let Some(p) = &self.publish {
            if p.provider_version.trim().is_empty() {
                return Err(Error::setting(
                    "--provider-version",
                    "publishing verification results needs the provider version: add --provider-version <version>",
                ));
            }
            if self.broker.is_none() {
                return Err(Error::setting(
                    "--broker-url",
                    "results can only be published to a Pact Broker: add --broker-url <url>",
                ));
            }
        }
        for p in &self.pacts {
            if !is_url(p) && !Path::new(p).exists() {
                return Err(Error::setting(
                    "--pacts",
                    format!("{p} is neither a pact file, a directory of pacts nor an http(s) URL"),
                ));
            }
        }
        if let Some(c) = self.consumers.iter().find(|c| c.trim().is_empty()) {
            return Err(Error::setting(
                "--consumer",
                format!("a consumer's name is empty (`{c}`)"),
            ));
        }
        if let Some(change) = &self.state_change {
            if !(is_url(&change.url) || change.url.starts_with('/')) {
                return Err(Error::setting(
                    "--state-change-url",
                    format!(
                        "--state-change-url {}: give an http(s) URL, or a path such as /_pact/state on the provider's own address",
                        change.url
                    ),
                ));
            }
        }
        match &self.candidate {
            Some(Candidate::Binary(b)) if !b.is_file() => {
                return Err(Error::setting(
                    "--binary",
                    format!("the candidate binary {} does not exist", b.display()),
                ));
            }
            Some(Candidate::Build(c)) if !c.join("Dockerfile").is_file() => {
                return Err(Error::setting(
                    "--build",
                    format!(
                        "{} is not a Docker build context: it has no Dockerfile",
                        c.display()
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// One line saying what is verified against what (never the broker token).
    pub fn describe(&self, dir: &Path) -> String {
        let candidate = match &self.candidate {
            None => "as the manifest runs it".to_string(),
            Some(Candidate::Binary(b)) => format!("candidate binary {}", b.display()),
            Some(Candidate::Image(i)) => format!("candidate image {i}"),
            Some(Candidate::Build(c)) => format!("candidate built from {}", c.display()),
        };
        let mut sources: Vec<String> = self.pacts.clone();
        match &self.broker {
            Some(b) => sources.push(format!("the broker at {}", b.url)),
            None if sources.is_empty() => sources.push(dir.display().to_string()),
            None => {}
        }
        let mut source = format!("the pacts of {}", sources.join(", "));
        if !self.consumers.is_empty() {
            source.push_str(&format!(" (consumers {})", self.consumers.join(", ")));
        }
        if let Some(change) = &self.state_change {
            source.push_str(&format!(
                ", provider states from {}{}",
                change.url,
                if change.teardown {
                    " (with teardown)"
                } else {
                    ""
                }
            ));
        }
        format!(
            "verifying `{}` ({candidate}) against {source}",
            self.provider
        )
    }

    /// Replaces the provider's launch in the manifest with the candidate's.
    pub fn apply_candidate(&self, manifest: &mut Manifest) -> Result<(), Error> {
        let Some(candidate) = &self.candidate else {
            return Ok(());
        };
        let service = manifest
            .services
            .iter_mut()
            .find(|s| s.name == self.provider)
            .ok_or_else(|| Error::UnknownProvider {
                provider: self.provider.clone(),
            })?;
        match candidate {
            Candidate::Binary(path) => {
                let text = path.to_string_lossy();
                let program = Template::parse(&text).map_err(|e| {
                    Error::setting(
                        "--binary",
                        format!("the candidate binary path {text}: {}", e.message),
                    )
                })?;
                service.launch = Launch::Command(vec![program]);
            }
            Candidate::Image(image) => {
                // Only a container backend runs an image: natively the service now has nothing
                // to run, which the backend reports before anything starts.
                service.image = Some(image.clone());
                service.build = None;
                service.launch = Launch::ImageOnly;
            }
            Candidate::Build(context) => {
                service.build = Some(crate::manifest::Build {
                    context: context.clone(),
                    dockerfile: "Dockerfile".into(),
                    args: Default::default(),
                    target: None,
                });
                service.image = None;
                service.launch = Launch::ImageOnly;
            }
        }
        Ok(())
    }

    /// Where the verifier reads the pacts: `--pacts` and the broker's pacts for the provider,
    /// else `dir`.
    fn pact_sources(&self, dir: &Path) -> Result<Vec<PactSource>, Error> {
        let mut sources: Vec<PactSource> = self
            .pacts
            .iter()
            .map(|p| {
                if is_url(p) {
                    PactSource::URL(p.clone(), None)
                } else if Path::new(p).is_dir() {
                    PactSource::Dir(p.clone())
                } else {
                    PactSource::File(p.clone())
                }
            })
            .collect();
        match &self.broker {
            Some(b) => sources.push(self.broker_source(b)?),
            None if sources.is_empty() => {
                sources.push(PactSource::Dir(dir.to_string_lossy().into_owned()))
            }
            None => {}
        }
        Ok(sources)
    }

    /// The broker's pacts for the provider.
    fn broker_source(&self, b: &BrokerSource) -> Result<PactSource, Error> {
        let selectors = pact_verifier::selectors::json_to_selectors(b.selectors.clone());
        if selectors.len() != b.selectors.len() {
            return Err(Error::setting(
                "--consumer-version-selector",
                format!(
                    "a consumer version selector is not valid: {}",
                    Value::Array(b.selectors.clone())
                ),
            ));
        }
        Ok(PactSource::BrokerWithDynamicConfiguration {
            provider_name: self.provider.clone(),
            broker_url: b.url.clone(),
            enable_pending: b.enable_pending,
            include_wip_pacts_since: b.include_wip_pacts_since.clone(),
            provider_tags: vec![],
            provider_branch: self.publish.as_ref().and_then(|p| p.branch.clone()),
            selectors,
            auth: b.token.clone().map(HttpAuth::Token),
            links: vec![],
        })
    }
}

impl Contracts {
    /// Verifies `request.provider` against all its pacts (from the directory or a broker),
    /// publishing the results if asked; returns the summary. The provider's HTTP API is the
    /// one of `stack`.
    pub async fn verify_provider(
        &self,
        stack: Arc<Stack>,
        request: &VerifyRequest,
    ) -> Result<VerifyReport, Error> {
        let provider = request.provider.clone();
        let run = Verification {
            contracts: self,
            stack: stack.clone(),
            provider: provider.clone(),
            target: provider_target(&stack, &provider)?,
            state_change: request.state_change.clone(),
        };
        let sources = request.pact_sources(&self.dir)?;
        let publish = request.publish.as_ref().map(|p| PublishOptions {
            provider_version: Some(p.provider_version.clone()),
            build_url: p.build_url.clone(),
            provider_tags: vec![],
            provider_branch: p.branch.clone(),
        });
        let outcome = run
            .run(
                sources,
                FilterInfo::None,
                request.consumers.clone(),
                publish.as_ref(),
            )
            .await?;
        Ok(VerifyReport::from_outcome(provider, &outcome))
    }

    /// A suite for `harness verify`: the candidate (if any) replaces the provider's launch in
    /// the manifest, and one trial, `verify::<provider>`, verifies the provider against all
    /// its pacts, prints the summary table and fails if any interaction failed.
    pub fn verify_suite(&self, suite: Suite, request: VerifyRequest) -> Suite {
        self.verify_suite_reporting(suite, request, Settings::process().path(ENV_REPORT))
    }

    /// [`Contracts::verify_suite`], writing the report as JSON to `report` (if any).
    pub(crate) fn verify_suite_reporting(
        &self,
        suite: Suite,
        request: VerifyRequest,
        report: Option<PathBuf>,
    ) -> Suite {
        let request = Arc::new(request);
        let report_path = Arc::new(report);
        let name = format!("verify::{}", request.provider);
        let hook = request.clone();
        let contracts = self.clone();
        suite
            .configure_manifest(move |m| {
                hook.apply_candidate(m)
                    .map_err(|e| crate::Error::Usage(e.to_string()))
            })
            .trial(&name, move |ctx| {
                let (contracts, request, report_path) =
                    (contracts.clone(), request.clone(), report_path.clone());
                async move {
                    println!("\n{}", request.describe(contracts.dir()));
                    let report = contracts
                        .verify_provider(ctx.stack.clone(), &request)
                        .await?;
                    if let Some(path) = report_path.as_ref() {
                        write_report(&report, path)?;
                    }
                    println!("\n{}", report.table());
                    if let Some(p) = &request.publish {
                        println!(
                            "verification results published for provider version {}{}",
                            p.provider_version,
                            p.branch
                                .as_deref()
                                .map(|b| format!(" (branch {b})"))
                                .unwrap_or_default()
                        );
                    }
                    if report.ok {
                        Ok(())
                    } else {
                        Err(Error::NotVerified {
                            provider: report.provider,
                            failures: report.failures,
                        }
                        .into())
                    }
                }
            })
    }
}

fn is_url(p: &str) -> bool {
    p.starts_with("http://") || p.starts_with("https://")
}

/// Writes `report` as JSON to `path`, where `harness verify` reads it.
fn write_report(report: &VerifyReport, path: &Path) -> Result<(), Error> {
    let fault = |cause: String| Error::Report {
        path: path.to_path_buf(),
        cause,
    };
    let json = serde_json::to_vec_pretty(report).map_err(|e| fault(e.to_string()))?;
    std::fs::write(path, json).map_err(|e| fault(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishing_needs_a_broker() {
        let request = VerifyRequest {
            provider: "payments".into(),
            candidate: None,
            broker: None,
            publish: Some(Publish {
                provider_version: "1".into(),
                ..Publish::default()
            }),
            ..VerifyRequest::default()
        };
        let err = request.validate().unwrap_err();
        assert!(err.to_string().contains("--broker-url"), "{err}");
        assert!(
            matches!(
                err,
                Error::Setting {
                    setting: "--broker-url",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
