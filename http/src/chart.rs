//! The `/api/stats.svg` bar chart: talk time per bucket, audio and video side by side, with
//! labelled axes and a legend. A small hand-written SVG writer: the picture is a few dozen
//! rectangles and labels, not worth a plotting library and its dependencies. Pure.

use std::fmt::Write as _;

use chrono::TimeZone;
use chrono_tz::Tz;
use sipedge_store::UnixMs;

use crate::params::BucketSize;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const AUDIO: &str = "#2f6db5";
const VIDEO: &str = "#e08a1e";
/// At most this many x-axis labels, so that 90 daily bars stay readable.
const MAX_X_LABELS: usize = 24;

/// One bar group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// The bucket's start, for its x-axis label.
    pub start: UnixMs,
    /// Talk time of the bucket's audio calls, drawn on the left.
    pub audio_talk_s: f64,
    /// Talk time of the bucket's video calls, drawn on the right.
    pub video_talk_s: f64,
}

/// The language of the chart's words: the front end's `?lang` (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// Every word the chart draws, in one language.
struct Words {
    /// Title of an hourly chart.
    per_hour: &'static str,
    /// Title of a daily chart.
    per_day: &'static str,
    /// Between the interval's two ends in the title.
    to: &'static str,
    /// The x axis's title, hourly and daily.
    hour_axis: &'static str,
    day_axis: &'static str,
    /// The y axis's title.
    talk_time: &'static str,
    /// Seconds, minutes, hours.
    units: [&'static str; 3],
    /// The legend.
    audio: &'static str,
    video: &'static str,
}

impl Lang {
    fn words(self) -> &'static Words {
        match self {
            Lang::En => &Words {
                per_hour: "Talk time per hour",
                per_day: "Talk time per day",
                to: "to",
                hour_axis: "hour of day",
                day_axis: "day",
                talk_time: "talk time",
                units: ["s", "min", "h"],
                audio: "audio",
                video: "video",
            },
            Lang::Zh => &Words {
                per_hour: "每小时通话时长",
                per_day: "每日通话时长",
                to: "至",
                hour_axis: "小时",
                day_axis: "日期",
                talk_time: "通话时长",
                units: ["秒", "分钟", "小时"],
                audio: "语音",
                video: "视频",
            },
        }
    }
}

/// What the chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// The queried interval, for the title.
    pub start: UnixMs,
    pub end: UnixMs,
    /// Hour or day buckets, for the labels' format.
    pub bucket: BucketSize,
    /// One group of two bars per bucket, in time order.
    pub bars: Vec<Bar>,
    /// `node.timezone`: labels show local hours and days.
    pub zone: Tz,
    /// The language of the words.
    pub lang: Lang,
}

/// Text made safe for SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The y axis unit that keeps tick labels short (0 seconds, 1 minutes, 2 hours), and its
/// size in seconds.
fn unit(max_s: f64) -> (usize, f64) {
    if max_s < 600.0 {
        (0, 1.0)
    } else if max_s < 36_000.0 {
        (1, 60.0)
    } else {
        (2, 3600.0)
    }
}

/// A round tick step (1, 2 or 5 × 10^k) giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(f64::MIN_POSITIVE)
}

fn label(t: UnixMs, bucket: BucketSize, zone: Tz) -> String {
    let at = zone.timestamp_millis_opt(t.0).single();
    match (at, bucket) {
        (Some(at), BucketSize::Hour) => at.format("%H:%M").to_string(),
        (Some(at), BucketSize::Day) => at.format("%m-%d").to_string(),
        (None, _) => String::new(),
    }
}

fn number(v: f64) -> String {
    let rounded = (v * 100.0).round() / 100.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded}")
    }
}

/// The whole SVG document.
pub fn svg(chart: &Chart) -> String {
    let max_s = chart
        .bars
        .iter()
        .flat_map(|b| [b.audio_talk_s, b.video_talk_s])
        .fold(0.0f64, f64::max);
    let words = chart.lang.words();
    let (unit_index, unit_s) = unit(max_s);
    let unit_name = words.units.get(unit_index).copied().unwrap_or_default();
    let step = tick_step(max_s / unit_s);
    let ticks = ((max_s / unit_s) / step).ceil().max(1.0) as usize;
    let top_value = step * ticks as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v_s: f64| TOP + plot_h - (v_s / unit_s / top_value) * plot_h;

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let per = match chart.bucket {
        BucketSize::Hour => words.per_hour,
        BucketSize::Day => words.per_day,
    };
    let title = format!(
        "{per}, {} {} {} ({})",
        crate::render::local(chart.start, chart.zone),
        words.to,
        crate::render::local(chart.end, chart.zone),
        chart.zone.name()
    );
    let _ = write!(
        s,
        r#"<title>{0}</title><rect width="100%" height="100%" fill="white"/><text x="{1}" y="22" text-anchor="middle" font-size="15">{0}</text>"#,
        escape(&title),
        WIDTH / 2.0
    );
    // Grid and y tick labels.
    for i in 0..=ticks {
        let v = step * i as f64;
        let py = TOP + plot_h - (v / top_value) * plot_h;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            number(v)
        );
    }
    // Bars: each bucket is a slot with the audio bar on the left and the video bar on the right.
    let n = chart.bars.len().max(1);
    let slot = plot_w / n as f64;
    let bar_w = (slot * 0.4).max(0.5);
    let every = chart.bars.len().div_ceil(MAX_X_LABELS).max(1);
    for (i, bar) in chart.bars.iter().enumerate() {
        let x0 = LEFT + slot * i as f64 + slot * 0.1;
        for (j, (value, colour, what)) in [
            (bar.audio_talk_s, AUDIO, words.audio),
            (bar.video_talk_s, VIDEO, words.video),
        ]
        .into_iter()
        .enumerate()
        {
            let top = y(value);
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{top:.1}" width="{bar_w:.1}" height="{:.1}" fill="{colour}"><title>{} {what}: {} {unit_name}</title></rect>"#,
                x0 + bar_w * j as f64,
                (TOP + plot_h - top).max(0.0),
                escape(&label(bar.start, chart.bucket, chart.zone)),
                number(value / unit_s)
            );
        }
        if i % every == 0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                LEFT + slot * (i as f64 + 0.5),
                TOP + plot_h + 16.0,
                escape(&label(bar.start, chart.bucket, chart.zone))
            );
        }
    }
    // Axes, their titles and the legend.
    let x_title = match chart.bucket {
        BucketSize::Hour => words.hour_axis,
        BucketSize::Day => words.day_axis,
    };
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{0:.1}" stroke="#333"/><line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#333"/><text x="{2:.1}" y="{3:.1}" text-anchor="middle">{x_title} ({4})</text><text x="16" y="{5:.1}" text-anchor="middle" transform="rotate(-90 16 {5:.1})">{6} ({unit_name})</text>"##,
        TOP + plot_h,
        LEFT + plot_w,
        LEFT + plot_w / 2.0,
        TOP + plot_h + 40.0,
        escape(chart.zone.name()),
        TOP + plot_h / 2.0,
        words.talk_time
    );
    let lx = LEFT + plot_w - 150.0;
    let ly = HEIGHT - 18.0;
    let _ = write!(
        s,
        r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{AUDIO}"/><text x="{:.1}" y="{ly:.1}">{}</text><rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{VIDEO}"/><text x="{:.1}" y="{ly:.1}">{}</text></svg>"#,
        ly - 10.0,
        lx + 16.0,
        words.audio,
        lx + 75.0,
        ly - 10.0,
        lx + 91.0,
        words.video
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: PartialEq + std::fmt::Debug>(got: T, expected: T) {
        assert_eq!(got, expected);
    }

    #[test]
    fn escape_table() {
        check(
            escape("a<b>&\"c'"),
            "a&lt;b&gt;&amp;&quot;c&#39;".to_owned(),
        );
        check(escape("Asia/Shanghai"), "Asia/Shanghai".to_owned());
        check(escape("bell\u{7}"), "bell".to_owned());
    }

    #[test]
    fn ticks_table() {
        check(tick_step(0.0), 1.0);
        check(tick_step(10.0), 2.0);
        check(tick_step(47.0), 10.0);
        check(tick_step(480.0), 100.0);
        check(tick_step(0.3), 0.1);
        check(unit(59.0), (0, 1.0));
        check(unit(3_000.0), (1, 60.0));
        check(unit(86_400.0), (2, 3600.0));
    }

    #[test]
    fn the_chart_has_a_bar_per_type_and_bucket_axes_and_a_legend() {
        let zone = chrono_tz::Asia::Shanghai;
        let start = UnixMs(1_795_017_600_000); // 2026-11-19 00:00 in Shanghai
        let bars: Vec<Bar> = (0..24)
            .map(|h| Bar {
                start: UnixMs(start.0 + h * 3_600_000),
                audio_talk_s: h as f64 * 100.0,
                video_talk_s: 50.0,
            })
            .collect();
        let chart = Chart {
            start,
            end: UnixMs(start.0 + 86_400_000),
            bucket: BucketSize::Hour,
            bars,
            zone,
            lang: Lang::En,
        };
        let zh = svg(&Chart {
            lang: Lang::Zh,
            ..chart.clone()
        });
        assert!(zh.contains("通话时长 (分钟)"), "{zh}");
        assert!(zh.contains(">语音</text>") && zh.contains(">视频</text>"));
        assert!(zh.contains("每小时通话时长, 2026-11-19 00:00:00 至 2026-11-20 00:00:00"));
        let svg = svg(&chart);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        check(svg.matches("<rect x=").count(), 48 + 2);
        assert!(svg.contains("talk time (min)"), "{svg}");
        assert!(svg.contains("hour of day (Asia/Shanghai)"));
        assert!(svg.contains(">00:00</text>") && svg.contains(">23:00</text>"));
        assert!(svg.contains(">audio</text>") && svg.contains(">video</text>"));
        assert!(svg.contains("Talk time per hour, 2026-11-19 00:00:00 to 2026-11-20 00:00:00"));
        // Nothing unescaped slipped into the text.
        check(svg.matches('<').count(), svg.matches('>').count());
    }
}
