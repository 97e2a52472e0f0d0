//! SQL functions of schema `spock`, with Spock's names and signatures. Most of the
//! node and replication-set API is hand-written SQL (`sql/spock_api.sql`); the
//! helpers it needs from inside the server are here.

mod ddl;
mod info;
mod pause;
mod progress;
mod repset;
mod subscription;
mod sync;

pgrx::extension_sql_file!("../../../sql/spock_catalog.sql", name = "catalog", bootstrap);
pgrx::extension_sql_file!("../../../sql/spock_api.sql", name = "api", finalize);
