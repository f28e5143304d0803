//! The `HARNESS_VERIFY_*` environment: how `harness verify` hands its request to the suite
//! binary it runs, and how the suite binary hands its report back.

use crate::settings::Settings;
use serde_json::Value;

use super::states::StateChange;
use super::verify::{BrokerSource, Candidate, Publish, VerifyRequest};
use super::Error;

const ENV_PROVIDER: &str = "HARNESS_VERIFY_PROVIDER";
const ENV_BINARY: &str = "HARNESS_VERIFY_BINARY";
const ENV_IMAGE: &str = "HARNESS_VERIFY_IMAGE";
const ENV_BUILD: &str = "HARNESS_VERIFY_BUILD";
const ENV_BROKER_URL: &str = "HARNESS_VERIFY_BROKER_URL";
const ENV_SELECTORS: &str = "HARNESS_VERIFY_SELECTORS";
const ENV_PENDING: &str = "HARNESS_VERIFY_ENABLE_PENDING";
const ENV_WIP: &str = "HARNESS_VERIFY_WIP_SINCE";
const ENV_VERSION: &str = "HARNESS_VERIFY_PROVIDER_VERSION";
const ENV_BRANCH: &str = "HARNESS_VERIFY_BRANCH";
const ENV_BUILD_URL: &str = "HARNESS_VERIFY_BUILD_URL";
const ENV_PUBLISH: &str = "HARNESS_VERIFY_PUBLISH";
const ENV_PACTS: &str = "HARNESS_VERIFY_PACTS";
const ENV_CONSUMERS: &str = "HARNESS_VERIFY_CONSUMERS";
const ENV_STATE_CHANGE_URL: &str = "HARNESS_VERIFY_STATE_CHANGE_URL";
const ENV_STATE_CHANGE_TEARDOWN: &str = "HARNESS_VERIFY_STATE_CHANGE_TEARDOWN";

impl VerifyRequest {
    /// The environment that carries this request to a suite binary.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(ENV_PROVIDER, self.provider.clone())];
        match &self.candidate {
            Some(Candidate::Binary(b)) => env.push((ENV_BINARY, b.to_string_lossy().into_owned())),
            Some(Candidate::Image(i)) => env.push((ENV_IMAGE, i.clone())),
            Some(Candidate::Build(c)) => env.push((ENV_BUILD, c.to_string_lossy().into_owned())),
            None => {}
        }
        if let Some(b) = &self.broker {
            env.push((ENV_BROKER_URL, b.url.clone()));
            if !b.selectors.is_empty() {
                env.push((ENV_SELECTORS, Value::Array(b.selectors.clone()).to_string()));
            }
            if b.enable_pending {
                env.push((ENV_PENDING, "true".into()));
            }
            if let Some(w) = &b.include_wip_pacts_since {
                env.push((ENV_WIP, w.clone()));
            }
        }
        if !self.pacts.is_empty() {
            env.push((ENV_PACTS, self.pacts.join("\n")));
        }
        if !self.consumers.is_empty() {
            env.push((ENV_CONSUMERS, self.consumers.join("\n")));
        }
        if let Some(change) = &self.state_change {
            env.push((ENV_STATE_CHANGE_URL, change.url.clone()));
            if change.teardown {
                env.push((ENV_STATE_CHANGE_TEARDOWN, "true".into()));
            }
        }
        if let Some(p) = &self.publish {
            env.push((ENV_PUBLISH, "true".into()));
            env.push((ENV_VERSION, p.provider_version.clone()));
            if let Some(b) = &p.branch {
                env.push((ENV_BRANCH, b.clone()));
            }
            if let Some(u) = &p.build_url {
                env.push((ENV_BUILD_URL, u.clone()));
            }
        }
        env
    }

    /// The request carried in the environment, if any (`HARNESS_VERIFY_PROVIDER` is set).
    pub fn from_env() -> Result<Option<VerifyRequest>, Error> {
        let settings = Settings::from_env();
        Self::from_vars(|k| settings.get(k))
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<VerifyRequest>, Error> {
        let Some(provider) = var(ENV_PROVIDER) else {
            return Ok(None);
        };
        let candidate = match var(ENV_BUILD) {
            Some(_) if var(ENV_BINARY).is_some() || var(ENV_IMAGE).is_some() => {
                return Err(Error::setting(
                    ENV_BUILD,
                    format!("set one of {ENV_BINARY}, {ENV_IMAGE} and {ENV_BUILD}"),
                ))
            }
            Some(context) => Some(Candidate::Build(context.into())),
            None => Candidate::either(
                var(ENV_BINARY).map(Into::into),
                var(ENV_IMAGE),
                [ENV_BINARY, ENV_IMAGE],
            )?,
        };
        let broker = match var(ENV_BROKER_URL) {
            None => None,
            Some(url) => {
                let selectors = match var(ENV_SELECTORS) {
                    None => vec![],
                    Some(s) => match serde_json::from_str::<Value>(&s) {
                        Ok(Value::Array(a)) => a,
                        Ok(other) => vec![other],
                        Err(e) => {
                            return Err(Error::setting(
                                ENV_SELECTORS,
                                format!("{ENV_SELECTORS} is not JSON: {e}"),
                            ))
                        }
                    },
                };
                Some(BrokerSource {
                    url,
                    token: var("PACT_BROKER_TOKEN"),
                    selectors,
                    enable_pending: var(ENV_PENDING).is_some_and(|v| v == "true" || v == "1"),
                    include_wip_pacts_since: var(ENV_WIP),
                })
            }
        };
        let publish = if var(ENV_PUBLISH).is_some_and(|v| v == "true" || v == "1") {
            Some(Publish {
                provider_version: var(ENV_VERSION).unwrap_or_default(),
                branch: var(ENV_BRANCH),
                build_url: var(ENV_BUILD_URL),
            })
        } else {
            None
        };
        let list = |name: &str| -> Vec<String> {
            var(name)
                .map(|v| v.lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let request = VerifyRequest {
            provider,
            candidate,
            broker,
            publish,
            pacts: list(ENV_PACTS),
            consumers: list(ENV_CONSUMERS),
            state_change: var(ENV_STATE_CHANGE_URL).map(|url| StateChange {
                url,
                teardown: var(ENV_STATE_CHANGE_TEARDOWN).is_some_and(|v| v == "true" || v == "1"),
            }),
        };
        request.validate()?;
        Ok(Some(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_provider_means_no_request() {
        assert_eq!(VerifyRequest::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn a_request_round_trips_through_the_environment() {
        let request = VerifyRequest {
            provider: "payments".into(),
            candidate: Some(Candidate::Image("shop/payments:rc1".into())),
            broker: Some(BrokerSource {
                url: "http://127.0.0.1:9292".into(),
                token: None,
                selectors: vec![
                    serde_json::json!({"mainBranch": true}),
                    serde_json::json!({"deployedOrReleased": true}),
                ],
                enable_pending: true,
                include_wip_pacts_since: Some("2024-01-01".into()),
            }),
            publish: Some(Publish {
                provider_version: "1.2.3".into(),
                branch: Some("main".into()),
                build_url: None,
            }),
            pacts: vec!["/".into(), "http://127.0.0.1:9292/pacts/x.json".into()],
            consumers: vec!["orders".into(), "refunds".into()],
            state_change: Some(StateChange {
                url: "/_pact/state".into(),
                teardown: true,
            }),
        };
        let env: Vec<(&str, String)> = request.to_env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            VerifyRequest::from_vars(vars(&pairs)).unwrap(),
            Some(request)
        );
    }

    #[test]
    fn the_token_stays_out_of_the_request_environment_and_debug_output() {
        let source = BrokerSource {
            url: "http://127.0.0.1:9".into(),
            token: Some("s3cret".into()),
            ..BrokerSource::default()
        };
        let request = VerifyRequest {
            provider: "payments".into(),
            candidate: None,
            broker: Some(source.clone()),
            publish: None,
            ..VerifyRequest::default()
        };
        assert!(request.to_env().iter().all(|(_, v)| !v.contains("s3cret")));
        assert!(!format!("{request:?}").contains("s3cret"));
        let back = VerifyRequest::from_vars(vars(&[
            (ENV_PROVIDER, "payments"),
            (ENV_BROKER_URL, "http://127.0.0.1:9"),
            ("PACT_BROKER_TOKEN", "s3cret"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(back.broker.unwrap().token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn publishing_without_a_version_is_a_usage_error() {
        let err = VerifyRequest::from_vars(vars(&[
            (ENV_PROVIDER, "payments"),
            (ENV_BROKER_URL, "http://127.0.0.1:9"),
            (ENV_PUBLISH, "true"),
        ]))
        .unwrap_err();
        assert_eq!(err.exit_code(), crate::exit_code::INVALID_INPUT);
        assert!(err.to_string().contains("--provider-version"), "{err}");
        assert!(
            matches!(
                err,
                Error::Setting {
                    setting: "--provider-version",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_bad_setting_names_its_variable() {
        let both = VerifyRequest::from_vars(vars(&[
            (ENV_PROVIDER, "payments"),
            (ENV_BINARY, "/bin/true"),
            (ENV_IMAGE, "shop/payments:rc"),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                both,
                Error::Setting {
                    setting: ENV_BINARY,
                    ..
                }
            ),
            "{both:?}"
        );
        let selectors = VerifyRequest::from_vars(vars(&[
            (ENV_PROVIDER, "payments"),
            (ENV_BROKER_URL, "http://127.0.0.1:9"),
            (ENV_SELECTORS, "mainBranch"),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                selectors,
                Error::Setting {
                    setting: ENV_SELECTORS,
                    ..
                }
            ),
            "{selectors:?}"
        );
    }
}
