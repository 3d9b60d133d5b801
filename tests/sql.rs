//! The bank's database (`etc/sql/`) on a real PostgreSQL server.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use support::postgres::Postgres;

#[test]
fn harness_smoke() {
    let mut pg = Postgres::start();
    pg.create_database("t");
    assert_eq!(pg.psql("t", "SELECT 1 + 1;").trim(), "2");
    pg.create_login_role("r", "p w'x");
    assert_eq!(
        pg.psql_as("t", "r", "SELECT current_user;").unwrap().trim(),
        "r"
    );
    pg.stop();
    pg.start_again();
    assert_eq!(pg.psql("t", "SELECT 3;").trim(), "3");
    println!("{}", pg.url("t", "r"));
}
