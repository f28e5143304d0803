//! `fresh_database()` latency: median and p95 over 100 clones of a migrated template
//! (the orders service's migrations), on a stack of just PostgreSQL.
//!
//! Run: `cargo bench -p suites --bench fresh_database`

use std::path::Path;
use std::time::{Duration, Instant};

use harness::isolation::DatabaseTemplate;
use harness::{Manifest, Stack, StackOptions};

const CALLS: usize = 100;

fn main() -> anyhow::Result<()> {
    std::env::set_var("PACT_DO_NOT_TRACK", "true");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let manifest = Manifest::parse(
            Path::new("bench.toml"),
            "[services.postgres]\nkind = \"postgres\"\n",
        )?;
        let stack = Stack::start(manifest, StackOptions::default()).await?;
        let migrations =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/orders/migrations");
        let result = async {
            let template =
                DatabaseTemplate::from_migrations(&stack, "orders_bench", &migrations).await?;
            let mut times: Vec<Duration> = Vec::with_capacity(CALLS);
            let mut made = Vec::new();
            for _ in 0..CALLS {
                let t0 = Instant::now();
                let db = template.fresh_database().await?;
                times.push(t0.elapsed());
                made.push(db);
            }
            for db in &made {
                template.drop_database(db).await?;
            }
            template.close().await?;
            // The pool's clones nobody took must be gone with it.
            let url = stack
                .endpoint("postgres")?
                .url(Some("postgres"))
                .map_err(anyhow::Error::msg)?;
            let admin = sqlx::PgPool::connect(&url).await?;
            let left: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'orders\\_bench\\_c%'",
            )
            .fetch_all(&admin)
            .await?;
            admin.close().await;
            anyhow::ensure!(left.is_empty(), "databases leaked after close(): {left:?}");
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let median = times[CALLS / 2];
            let p95 = times[CALLS * 95 / 100];
            println!(
                "fresh_database over {CALLS} calls ({} backend):",
                stack.backend()
            );
            println!(
                "  median {:.1} ms   p95 {:.1} ms   min {:.1} ms   max {:.1} ms",
                ms(median),
                ms(p95),
                ms(times[0]),
                ms(times[CALLS - 1])
            );
            let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
            println!(
                "  target: median <= 10 ms -> {}, p95 <= 30 ms -> {}; no database left after close()",
                verdict(median <= Duration::from_millis(10)),
                verdict(p95 <= Duration::from_millis(30))
            );
            anyhow::Ok(())
        }
        .await;
        stack.down().await;
        result
    })
}
