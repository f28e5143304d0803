//! A validated manifest written back as a `stack.toml` (`harness convert`): what a compose
//! file means to the harness, in the format it documents. Parsing the output gives the same
//! manifest (tested).

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::{Manifest, MountSource, ProbeSpec, Service, DEFAULT_STARTUP_TIMEOUT};
use crate::model::template::Template;

impl Manifest {
    /// The manifest as `stack.toml` text; relative paths stay relative to `dir`, where the
    /// file is meant to be written (the manifest's own directory, for a file beside it).
    pub fn to_toml(&self, dir: &Path) -> String {
        let mut root = Table::new();
        let mut stack = Table::new();
        stack.insert("name".into(), self.name.clone().into());
        if let Some(p) = self.images.pull {
            stack.insert("pull".into(), p.to_string().into());
        }
        if let Some(p) = &self.images.prefix {
            stack.insert("image-prefix".into(), p.clone().into());
        }
        if !self.images.overrides.is_empty() {
            let images: Table = self
                .images
                .overrides
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect();
            stack.insert("images".into(), images.into());
        }
        if let Some(d) = &self.state_dir {
            stack.insert("state-dir".into(), relative(d, dir).into());
        }
        if let Some(c) = &self.contracts_suite {
            let mut suite = Table::new();
            suite.insert("dir".into(), relative(&c.dir, dir).into());
            suite.insert("package".into(), c.package.clone().into());
            suite.insert("test".into(), c.test.clone().into());
            stack.insert("contracts-suite".into(), suite.into());
        }
        let mut head = Table::new();
        head.insert("stack".into(), stack.into());
        let services: Table = self
            .services
            .iter()
            .map(|s| (s.name.clone(), Value::Table(service(s, dir))))
            .collect();
        root.insert("services".into(), services.into());
        if !self.suites.is_empty() {
            let suites: Table = self
                .suites
                .iter()
                .map(|(k, v)| {
                    let services = strings(v.iter().cloned());
                    let value = match self.suite_commands.get(k) {
                        None => services,
                        Some(command) => {
                            let mut t = Table::new();
                            t.insert("services".into(), services);
                            t.insert("command".into(), strings(command.iter().cloned()));
                            Value::Table(t)
                        }
                    };
                    (k.clone(), value)
                })
                .collect();
            root.insert("suites".into(), suites.into());
        }
        // `[stack]` first, as people write it.
        let head = toml::to_string(&head).unwrap_or_default();
        let body = toml::to_string(&root).unwrap_or_default();
        format!(
            "# Converted from {} by `harness convert`.\n{head}\n{body}",
            self.path.display()
        )
    }
}

fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(items.into_iter().map(Value::from).collect())
}

fn templates(items: &[Template]) -> Value {
    strings(items.iter().map(|t| t.to_string()))
}

fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn service(s: &Service, dir: &Path) -> Table {
    let mut t = Table::new();
    t.insert("kind".into(), s.kind.name().into());
    if let Some(image) = s
        .image
        .as_ref()
        .filter(|i| s.kind.default_image() != Some(i.as_str()))
    {
        t.insert("image".into(), image.clone().into());
    }
    match &s.launch {
        super::Launch::Binary(b) => {
            t.insert("binary".into(), b.clone().into());
        }
        super::Launch::Command(c) => {
            t.insert("command".into(), templates(c));
        }
        super::Launch::Builtin | super::Launch::ImageOnly => {}
    }
    if !s.args.is_empty() {
        t.insert("args".into(), templates(&s.args));
    }
    if let Some(e) = &s.entrypoint {
        t.insert("entrypoint".into(), templates(e));
    }
    let default_port = s.kind.default_port();
    let ports: Table = s
        .ports
        .iter()
        .filter(|(name, port)| default_port != Some((name.as_str(), **port)))
        .map(|(name, port)| (name.clone(), Value::Integer(i64::from(*port))))
        .collect();
    if !ports.is_empty() {
        t.insert("ports".into(), ports.into());
    }
    if !s.depends_on.is_empty() {
        let deps: Table = s
            .depends_on
            .iter()
            .map(|d| (d.service.clone(), Value::from(d.condition.to_string())))
            .collect();
        t.insert("depends-on".into(), deps.into());
    }
    if let Some(p) = probe(s) {
        t.insert("probe".into(), p.into());
    }
    if s.startup_timeout != DEFAULT_STARTUP_TIMEOUT {
        t.insert("startup-timeout".into(), duration(s.startup_timeout).into());
    }
    for (key, value) in [
        ("user", &s.credentials.user),
        ("password", &s.credentials.password),
        ("database", &s.credentials.database),
        ("workdir", &s.workdir),
        ("run-as", &s.run_as),
    ] {
        if let Some(v) = value {
            t.insert(key.into(), v.clone().into());
        }
    }
    if let Some(b) = s.backend {
        t.insert("backend".into(), b.to_string().into());
    }
    for (key, list) in [
        ("databases", &s.databases),
        ("paths", &s.paths),
        ("aliases", &s.aliases),
        ("tmpfs", &s.tmpfs),
    ] {
        if !list.is_empty() {
            t.insert(key.into(), strings(list.iter().cloned()));
        }
    }
    if !s.volumes.is_empty() {
        let volumes = s.volumes.iter().map(|m| {
            let source = match &m.source {
                MountSource::Host(p) => relative(p, dir),
                MountSource::Volume(v) => v.clone(),
            };
            let mode = if m.read_only { ":ro" } else { "" };
            format!("{source}:{}{mode}", m.target)
        });
        t.insert("volumes".into(), strings(volumes));
    }
    if let Some(b) = &s.build {
        let mut build = Table::new();
        build.insert("context".into(), relative(&b.context, dir).into());
        build.insert("dockerfile".into(), b.dockerfile.clone().into());
        if !b.args.is_empty() {
            let args: Table = b
                .args
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect();
            build.insert("args".into(), args.into());
        }
        if let Some(t) = &b.target {
            build.insert("target".into(), t.clone().into());
        }
        t.insert("build".into(), build.into());
    }
    if !s.env.is_empty() {
        let env: Table = s
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.to_string())))
            .collect();
        t.insert("env".into(), env.into());
    }
    t
}

/// An absolute path of the manifest as written in it: `./…` below `dir`, else as it is.
fn relative(path: &Path, dir: &Path) -> String {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match path.strip_prefix(&dir) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
        Ok(rel) => format!("./{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// The probe, unless it is the one the service would get anyway.
fn probe(s: &Service) -> Option<Table> {
    let mut t = Table::new();
    match &s.probe {
        ProbeSpec::Protocol(kind) if *kind == s.kind => return None,
        ProbeSpec::Protocol(kind) => {
            t.insert("type".into(), kind.server()?.protocol().into());
        }
        ProbeSpec::Http { path, port } => {
            t.insert("type".into(), "http".into());
            t.insert("path".into(), path.clone().into());
            t.insert("port".into(), port.clone().into());
        }
        ProbeSpec::Tcp { port } => {
            t.insert("type".into(), "tcp".into());
            t.insert("port".into(), port.clone().into());
        }
        ProbeSpec::Exec(command) => {
            t.insert("type".into(), "exec".into());
            t.insert("command".into(), strings(command.iter().cloned()));
        }
        ProbeSpec::Exit => {
            t.insert("type".into(), "exit".into());
        }
        ProbeSpec::None => {
            t.insert("type".into(), "none".into());
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::settings::Settings;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name)
    }

    /// Everything but where it was read from (and the order dependencies are listed in).
    fn meaning(m: &Manifest) -> String {
        let mut services = m.services.clone();
        for s in &mut services {
            s.depends_on.sort_by_key(|d| d.service.clone());
        }
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            m.name, services, m.images, m.suites, m.suite_commands, m.state_dir
        )
    }

    #[test]
    fn a_converted_manifest_means_what_its_source_means() {
        let settings = Settings::from_pairs([("PATH", "/bin")]);
        for source in [
            "compose/docker-compose.test.yml",
            "stack.toml",
            "compose/jobs.yml",
            "polyglot/compose.yaml",
        ] {
            let path = fixture(source);
            let original = Manifest::load_with(&path, &settings).unwrap();
            let text = original.to_toml(original.dir());
            let converted = Manifest::parse_with(&path.with_extension("toml"), &text, &settings)
                .unwrap_or_else(|e| panic!("{source}: {e}\n{text}"));
            assert_eq!(meaning(&converted), meaning(&original), "{source}:\n{text}");
        }
    }
}
