//! PostgreSQL 18's own publication/subscription between two PostgreSQL 18 servers.

use super::{literal, Env, JoinVariant, Pair, System, PGBENCH_TABLES, TABLES};
use crate::replication::Result;
use spock_tests::PgInstall;

/// Native logical replication (`CREATE PUBLICATION` / `CREATE SUBSCRIPTION`).
#[derive(Default)]
pub struct Native {
    install: Option<PgInstall>,
}

impl System for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn prepare(&mut self, env: &Env) -> std::result::Result<String, String> {
        self.install = Some(env.pg18.clone());
        Ok(format!(
            "{} publication/subscription (streaming = off; parallel for the large transaction too)",
            env.pg18.version
        ))
    }

    fn install(&self) -> &PgInstall {
        self.install.as_ref().expect("prepare() succeeded")
    }

    fn settings(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn apply_process_patterns(&self) -> &'static [&'static str] {
        // "logical replication apply worker for subscription N" and
        // "logical replication parallel apply worker for subscription N"
        &["apply worker"]
    }

    fn setup(&self, pair: &Pair) -> Result<()> {
        pair.provider.execute(&format!("CREATE PUBLICATION bench_pub FOR TABLE {}", TABLES.join(", ")))?;
        // PostgreSQL 18's default is streaming = parallel; the baseline is "off"
        pair.subscriber.execute(&format!(
            "CREATE SUBSCRIPTION bench_sub CONNECTION {} PUBLICATION bench_pub WITH (copy_data = false, streaming = off)",
            literal(&pair.provider.dsn("postgres"))
        ))
    }

    fn disable(&self, pair: &Pair) -> Result<()> {
        pair.subscriber.execute("ALTER SUBSCRIPTION bench_sub DISABLE")
    }

    fn enable(&self, pair: &Pair) -> Result<()> {
        pair.subscriber.execute("ALTER SUBSCRIPTION bench_sub ENABLE")
    }

    fn streaming_modes(&self) -> &'static [&'static str] {
        &["parallel"]
    }

    fn set_streaming(&self, pair: &Pair, mode: &str) -> Result<()> {
        pair.subscriber.execute(&format!("ALTER SUBSCRIPTION bench_sub SET (streaming = {mode})"))
    }

    fn join_variants(&self) -> &'static [JoinVariant] {
        &[JoinVariant {
            name: "copy_data",
            schema_beforehand: true,
            how: "`CREATE SUBSCRIPTION ... WITH (copy_data = true, streaming = off)`; tablesync workers (`max_sync_workers_per_subscription` = 2, the default)",
        }]
    }

    fn join_provider(&self, pair: &Pair) -> Result<()> {
        pair.provider.execute(&format!("CREATE PUBLICATION join_pub FOR TABLE {}", PGBENCH_TABLES.join(", ")))
    }

    fn join_start_sql(&self, pair: &Pair, _variant: &JoinVariant) -> String {
        format!(
            "CREATE SUBSCRIPTION join_sub CONNECTION {} PUBLICATION join_pub WITH (copy_data = true, streaming = off)",
            literal(&pair.provider.dsn("postgres"))
        )
    }

    fn join_state_sql(&self) -> &'static str {
        // per table: i(nit) -> d(ata copy) -> f(inished copy) -> s(ync done) -> r(eady)
        "SELECT CASE WHEN count(*) = 0 THEN 'no tables'
                     WHEN bool_and(srsubstate = 'r') THEN 'ready'
                     WHEN bool_and(srsubstate = 'i') THEN 'start'
                     WHEN bool_or(srsubstate IN ('i', 'd')) THEN 'copy'
                     ELSE 'catchup' END
           FROM pg_subscription_rel"
    }
}
