//! Per-trial isolation on a shared stack: fresh databases cloned from a migrated template,
//! Redis key prefixes, unique queue names.
//!
//! Cloning is PostgreSQL's `CREATE DATABASE … TEMPLATE …`: a file copy, far faster than
//! migrating an empty database per trial. A template must have no open connections, so the
//! template is a database of its own, built once from a directory of SQL migrations and never
//! used directly.
//!
//! Clones come from a small pool: a background task keeps [`POOL_SIZE`] clones made ahead, so
//! `fresh_database()` usually only takes a name. The task starts with the first clone asked
//! for. [`DatabaseTemplate::close`] (or dropping the last handle inside a runtime) drops the
//! clones nobody took; recreating a template drops every earlier clone of it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use sqlx::Connection as _;

use crate::engine::stack::Stack;
use crate::manifest::Kind;

/// Clones kept made ahead of use.
pub const POOL_SIZE: usize = 4;

/// A migrated template database that trials clone.
#[derive(Debug, Clone)]
pub struct DatabaseTemplate {
    endpoint: crate::Endpoint,
    name: String,
    pool: Arc<Pool>,
}

/// Clones made ahead, and the task that makes them.
#[derive(Debug, Default)]
struct Pool {
    ready: tokio::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Result<String, String>>>>,
    filler: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Names made by the task and not yet handed out (to drop at close).
    unused: Arc<std::sync::Mutex<Vec<String>>>,
    endpoint: std::sync::OnceLock<crate::Endpoint>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The receiver goes with the pool, so the task stops after the clone it is making.
        let filler = self.filler.lock().unwrap_or_else(|p| p.into_inner()).take();
        let unused = self.unused.clone();
        if let (Some(ep), Ok(rt)) = (
            self.endpoint.get().cloned(),
            tokio::runtime::Handle::try_current(),
        ) {
            // Best effort: `close()` is the way that waits for it.
            rt.spawn(async move {
                if let Some(f) = filler {
                    let _ = f.await;
                }
                let names = std::mem::take(&mut *unused.lock().unwrap_or_else(|p| p.into_inner()));
                let _ = drop_all(&ep, &names).await;
            });
        }
    }
}

/// The name of a new clone of `template` (`tpl_x` -> `x_c<hex>`), within PostgreSQL's 63 bytes.
fn clone_name(template: &str) -> String {
    let stem: String = template
        .strip_prefix("tpl_")
        .unwrap_or(template)
        .chars()
        .take(40)
        .collect();
    format!("{stem}_c{:016x}", rand::random::<u64>())
}

async fn connect_admin(endpoint: &crate::Endpoint) -> anyhow::Result<sqlx::PgConnection> {
    let url = endpoint.url(Some("postgres")).map_err(|e| anyhow!(e))?;
    Ok(sqlx::PgConnection::connect(&url).await?)
}

async fn drop_all(endpoint: &crate::Endpoint, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut admin = connect_admin(endpoint).await?;
    for name in names {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(name)
        ))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping {name}"))?;
    }
    let _ = admin.close().await;
    Ok(())
}

/// The clause that makes `CREATE DATABASE` copy files: since PostgreSQL 15 the default writes
/// every page of the template, system catalogs included, through the WAL (17 ms per clone
/// here, 8 ms as a file copy); older servers know only the file copy and not the option.
async fn copy_strategy(admin: &mut sqlx::PgConnection) -> &'static str {
    let version: Option<String> = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(admin)
        .await
        .ok();
    match version.and_then(|v| v.parse::<u32>().ok()) {
        Some(v) if v >= 150000 => " STRATEGY FILE_COPY",
        _ => "",
    }
}

async fn clone(
    admin: &mut sqlx::PgConnection,
    template: &str,
    strategy: &str,
) -> Result<String, String> {
    let name = clone_name(template);
    sqlx::query(&format!(
        "CREATE DATABASE {} TEMPLATE {}{strategy}",
        quote(&name),
        quote(template)
    ))
    .execute(admin)
    .await
    .map_err(|e| format!("cloning {template}: {e}"))?;
    Ok(name)
}

/// Keeps the channel full of fresh clones over one admin connection, until it is closed.
async fn fill(
    endpoint: crate::Endpoint,
    template: String,
    tx: tokio::sync::mpsc::Sender<Result<String, String>>,
    unused: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut admin = match connect_admin(&endpoint).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(Err(format!("connecting to make clones: {e}")))
                .await;
            return;
        }
    };
    let strategy = copy_strategy(&mut admin).await;
    loop {
        let Ok(permit) = tx.reserve().await else {
            break;
        };
        match clone(&mut admin, &template, strategy).await {
            Ok(name) => {
                unused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(name.clone());
                permit.send(Ok(name));
            }
            Err(e) => {
                permit.send(Err(e));
                break;
            }
        }
    }
    let _ = admin.close().await;
}

/// A database of one trial's own.
#[derive(Debug, Clone)]
pub struct FreshDatabase {
    /// Its name.
    pub name: String,
    /// A URL to connect to it.
    pub url: String,
}

/// A boxed `Send` future. sqlx's connection futures trip the compiler's higher-ranked `Send`
/// checks when awaited inside other generic futures; boxing here settles them once.
pub type Boxed<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + Send + 'a>>;

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl DatabaseTemplate {
    /// Creates (or recreates) template database `name` on the stack's postgres service and
    /// applies every `*.sql` file of `migrations` to it, in file-name order.
    pub fn from_migrations<'a>(
        stack: &'a Stack,
        name: &'a str,
        migrations: &'a Path,
    ) -> Boxed<'a, DatabaseTemplate> {
        Box::pin(Self::from_migrations_inner(stack, name, migrations))
    }

    async fn from_migrations_inner(
        stack: &Stack,
        name: &str,
        migrations: &Path,
    ) -> anyhow::Result<DatabaseTemplate> {
        let service = stack
            .manifest()
            .services
            .iter()
            .find(|s| s.kind == Kind::Postgres)
            .ok_or_else(|| anyhow!("the stack has no postgres service"))?;
        let endpoint = stack.endpoint(&service.name)?;
        let template = DatabaseTemplate {
            endpoint,
            name: format!("tpl_{name}"),
            pool: Arc::default(),
        };
        let mut admin = template.admin().await?;
        // Clones of an earlier version of this template, which a killed run left behind.
        let stem = clone_name(&template.name);
        let pattern = format!("{}%", &stem[..stem.len() - 16].replace('_', "\\_"));
        let stale: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind(&pattern)
                .fetch_all(&mut admin)
                .await?;
        for db in std::iter::once(&template.name).chain(&stale) {
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(db)
            ))
            .execute(&mut admin)
            .await?;
        }
        sqlx::query(&format!("CREATE DATABASE {}", quote(&template.name)))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        let mut files: Vec<_> = std::fs::read_dir(migrations)
            .with_context(|| format!("reading migrations from {}", migrations.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        let mut script = String::new();
        for file in &files {
            script.push_str(
                &std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?,
            );
            script.push_str(";\n");
        }
        let pool = sqlx::PgPool::connect(&template.url(&template.name)?).await?;
        sqlx::raw_sql(&script)
            .execute(&pool)
            .await
            .with_context(|| format!("applying the migrations in {}", migrations.display()))?;
        pool.close().await;
        Ok(template)
    }

    fn url(&self, db: &str) -> anyhow::Result<String> {
        self.endpoint.url(Some(db)).map_err(|e| anyhow!(e))
    }

    async fn admin(&self) -> anyhow::Result<sqlx::PgConnection> {
        Ok(sqlx::PgConnection::connect(&self.url("postgres")?).await?)
    }

    /// A new database cloned from the template, with a unique name: from the pool when one
    /// is ready (the first call starts the task that keeps it filled).
    pub fn fresh_database(&self) -> Boxed<'_, FreshDatabase> {
        Box::pin(self.fresh_database_inner())
    }

    async fn fresh_database_inner(&self) -> anyhow::Result<FreshDatabase> {
        let mut ready = self.pool.ready.lock().await;
        if ready.is_none() {
            let (tx, rx) = tokio::sync::mpsc::channel(POOL_SIZE);
            let _ = self.pool.endpoint.set(self.endpoint.clone());
            let task = tokio::spawn(fill(
                self.endpoint.clone(),
                self.name.clone(),
                tx,
                self.pool.unused.clone(),
            ));
            *self.pool.filler.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
            *ready = Some(rx);
        }
        let made = match ready.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        };
        let name = match made {
            Some(Ok(name)) => name,
            Some(Err(e)) => {
                // The next call starts a new task.
                *ready = None;
                return Err(anyhow!(e));
            }
            None => {
                *ready = None;
                return Err(anyhow!("the task making clones of {} stopped", self.name));
            }
        };
        self.pool
            .unused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| *n != name);
        Ok(FreshDatabase {
            url: self.url(&name)?,
            name,
        })
    }

    /// Stops making clones and drops those nobody took. Databases handed out stay until
    /// [`DatabaseTemplate::drop_database`].
    pub fn close(&self) -> Boxed<'_, ()> {
        Box::pin(async move {
            *self.pool.ready.lock().await = None;
            let filler = self
                .pool
                .filler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(f) = filler {
                // Without its receiver the task ends after the clone it is making, which it
                // has put in `unused` (an abort could leave a committed clone unrecorded).
                let _ = f.await;
            }
            let unused =
                std::mem::take(&mut *self.pool.unused.lock().unwrap_or_else(|p| p.into_inner()));
            drop_all(&self.endpoint, &unused).await
        })
    }

    /// Drops a database made by [`DatabaseTemplate::fresh_database`].
    pub fn drop_database<'a>(&'a self, db: &'a FreshDatabase) -> Boxed<'a, ()> {
        Box::pin(self.drop_database_inner(db))
    }

    async fn drop_database_inner(&self, db: &FreshDatabase) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(&db.name)
        ))
        .execute(&mut admin)
        .await?;
        let _ = admin.close().await;
        Ok(())
    }
}

/// A Redis key prefix of one trial's own: `t:<hash of the trial name>:<random>:`.
pub fn redis_prefix(trial: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    trial.hash(&mut h);
    format!("t:{:08x}:{:08x}:", h.finish() as u32, rand::random::<u32>())
}

/// A queue name of one trial's own.
pub fn queue_name(trial: &str) -> String {
    let clean: String = trial
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '.' })
        .collect();
    format!("harness.{clean}.{:08x}", rand::random::<u32>())
}
