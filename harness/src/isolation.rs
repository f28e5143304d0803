//! Per-trial isolation on a shared stack: fresh databases cloned from a migrated template,
//! Redis key prefixes, unique queue names.
//!
//! Cloning is PostgreSQL's `CREATE DATABASE … TEMPLATE …`: a file copy, far faster than
//! migrating an empty database per trial. A template must have no open connections, so the
//! template is a database of its own, built once from a directory of SQL migrations and never
//! used directly.

use std::path::Path;

use anyhow::{anyhow, Context as _};
use sqlx::Connection as _;

use crate::manifest::Kind;
use crate::stack::Stack;

/// A migrated template database that trials clone.
#[derive(Debug, Clone)]
pub struct DatabaseTemplate {
    endpoint: crate::Endpoint,
    name: String,
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
        };
        let mut admin = template.admin().await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(&template.name)
        ))
        .execute(&mut admin)
        .await?;
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

    /// Clones the template into a new database with a unique name.
    pub fn fresh_database(&self) -> Boxed<'_, FreshDatabase> {
        Box::pin(self.fresh_database_inner())
    }

    async fn fresh_database_inner(&self) -> anyhow::Result<FreshDatabase> {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut admin = self.admin().await?;
        sqlx::query(&format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote(&name),
            quote(&self.name)
        ))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cloning {}", self.name))?;
        let _ = admin.close().await;
        Ok(FreshDatabase {
            url: self.url(&name)?,
            name,
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
