//! `sipedge cdrs`: the CDRs of a data dir listed offline, for an operator on the node (the
//! API's filters and renderings, without the service). The store is opened like `serve`
//! opens it, so a running sipedge's lock refuses it rather than two writers sharing a file.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use chrono::Utc;
use clap::Args;
use sipedge_http::params::{self, Extra};
use sipedge_http::render::{self, CdrView};
use sipedge_store::Store;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct CdrsArgs {
    /// The service's config: node.data_dir, store.engine and node.timezone are used.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Calls that started at or after this (`YYYYMMDDhhmmss`, `YYYY-MM-DD hh:mm:ss` in
    /// node.timezone, or RFC 3339); default today 00:00.
    #[arg(long)]
    start: Option<String>,
    /// …and before this; default tomorrow 00:00.
    #[arg(long)]
    end: Option<String>,
    /// At most this many, newest first (1 to 1000; default 100).
    #[arg(long, value_name = "N")]
    limit: Option<String>,
    /// CSV as `/api/cdrs.csv` writes it, instead of one JSON object per line.
    #[arg(long)]
    csv: bool,
}

/// Lists the CDRs; the error is one line for the operator.
pub fn run(args: &CdrsArgs) -> Result<(), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let data_dir = &config.node.data_dir;
    if !data_dir.is_dir() {
        return Err(format!(
            "{} (node.data_dir) is not a directory: no store to list",
            data_dir.display()
        ));
    }
    let mut wanted = HashMap::new();
    for (name, value) in [
        ("start", &args.start),
        ("end", &args.end),
        ("limit", &args.limit),
    ] {
        if let Some(value) = value {
            wanted.insert(name.to_owned(), value.clone());
        }
    }
    let zone = config.node.timezone.0;
    // No cursor is ever given here, so no cursor key is needed.
    let query = params::parse(&wanted, Extra::Paging, zone, Utc::now(), &[])
        .map_err(|e| format!("--{e}"))?;
    let store = Store::open(data_dir, config.store.engine, config.store_settings())
        .map_err(|e| e.to_string())?;
    let (page, _) = store
        .cdrs_page(&query.filter, None, query.limit)
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    if args.csv {
        out.push_str(render::CSV_HEADER);
        for cdr in &page {
            render::csv_row(&mut out, cdr, zone);
        }
    } else {
        for cdr in &page {
            let line =
                serde_json::to_string(&CdrView::new(cdr, zone)).map_err(|e| e.to_string())?;
            out.push_str(&line);
            out.push('\n');
        }
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| format!("cannot write the listing: {e}"))
}
