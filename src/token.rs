//! `sipedge token`: the body a terminal would send, for ops checking a node by hand and for
//! tests.

use chrono::Utc;
use chrono_tz::Tz;
use md5::{Digest, Md5};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The appid the token is made with.
    #[arg(long)]
    appid: String,
    /// `YYYYMMDDhhmmss`; now, in --timezone, when absent.
    #[arg(long)]
    timestamp: Option<String>,
    /// Zone of the timestamp (the node's `node.timezone`).
    #[arg(long, default_value = "Asia/Shanghai")]
    timezone: String,
    /// The requester's serial number, echoed back by the node.
    #[arg(long, default_value = "1")]
    stream_number: String,
}

pub fn run(args: &TokenArgs) -> Result<String, String> {
    let timestamp = match &args.timestamp {
        Some(t) => t.clone(),
        None => {
            let zone: Tz = args
                .timezone
                .parse()
                .map_err(|_| format!("unknown time zone {:?}", args.timezone))?;
            Utc::now()
                .with_timezone(&zone)
                .format("%Y%m%d%H%M%S")
                .to_string()
        }
    };
    let mut hasher = Md5::new();
    hasher.update(args.appid.as_bytes());
    hasher.update(timestamp.as_bytes());
    let body = serde_json::json!({
        "method": "getAgoraAccount",
        "streamNumber": args.stream_number,
        "token": hex::encode_upper(hasher.finalize()),
        "timestamp": timestamp,
    });
    Ok(body.to_string())
}
